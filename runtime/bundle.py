"""Model bundles: a folder with ``manifest.json`` listing every file with its size and sha256.

The manifest is the single place where model dimensions, special tokens and preprocessing parameters
live; the runtime reads them from here and never guesses them from a model's name.

A bundle may come from anywhere (a copied folder, a download), so :func:`open_bundle` treats it as untrusted:
every file in the folder must be listed and hashed (onnxruntime opens a graph's external data files itself, so an
unlisted ``decoder.onnx.data`` would otherwise load unchecked), :meth:`Bundle.file` serves only listed files, and
every number the runtime reads from the manifest is type- and range-checked before a loader sees it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgemm.runtime.errors import BundleError

MANIFEST = "manifest.json"
FORMAT = "edgemm-bundle/1"
SHA256 = re.compile(r"[0-9a-f]{64}")

# The manifest numbers the runtime reads, per bundle kind: section -> {field: (minimum, maximum)}. The maxima are
# far above any model an edge device runs; they keep a hostile manifest from sizing buffers of terabytes.
_LLM_NUMBERS = {
    "model": {
        "vocab_size": (1, 1 << 22),
        "hidden_size": (1, 1 << 16),
        "num_layers": (1, 1024),
        "num_kv_heads": (1, 1024),
        "head_dim": (1, 4096),
        "max_positions": (16, 1 << 24),
    }
}
TOKEN_ID = (0, 1 << 22)
NUMBERS = {
    "llm": _LLM_NUMBERS,
    "vlm": {**_LLM_NUMBERS, "image": {"token_id": TOKEN_ID, "tokens_per_image": (1, 1 << 16)}},
    "speech": {
        "model": {
            "d_model": (1, 1 << 16),
            "decoder_layers": (1, 1024),
            "decoder_attention_heads": (1, 1024),
            "max_source_positions": (1, 1 << 16),
            "max_target_positions": (1, 1 << 16),
        },
        "features": {
            "sample_rate": (1000, 384000),
            "n_fft": (16, 1 << 16),
            "hop_length": (1, 1 << 16),
            "n_mels": (1, 1024),
            "chunk_seconds": (1, 600),
        },
        "tokens": {
            name: TOKEN_ID
            for name in (
                "eot",
                "sot",
                "translate",
                "transcribe",
                "sot_prev",
                "no_speech",
                "no_timestamps",
                "timestamp_begin",
            )
        },
    },
    "vision": {"preprocessing": {"resize_shorter": (1, 8192), "crop": (1, 8192)}},
}


def models_dir() -> Path:
    """Where bundles are built and looked up: ``$EDGEMM_MODELS``, else the user's cache folder."""
    if os.environ.get("EDGEMM_MODELS"):
        return Path(os.environ["EDGEMM_MODELS"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "edgemm" / "models"


def sha256_of(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256_of(path)}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict
    # True for a bundle opened with open_bundle: file() serves only the files its manifest lists and hashes. A
    # bundle being built (the exporters) has no file list yet; its files still have to lie inside its folder.
    listed: bool = False

    def file(self, name: str) -> Path:
        """The path of the bundle file ``name``; a name the manifest does not list, or outside the folder, is
        refused."""
        if not isinstance(name, str) or not name:
            raise BundleError(f"bundle {self.path}: the manifest names a file as {name!r}, not a file name")
        files = self.manifest.get("files")
        if self.listed and not (isinstance(files, dict) and name in files):
            raise BundleError(f"bundle {self.path}: {name!r} is not listed with a hash in the manifest's files")
        folder = self.path.resolve()
        path = (folder / name).resolve()
        if not path.is_relative_to(folder) or path == folder:
            raise BundleError(f"bundle {self.path}: {name!r} lies outside the bundle folder")
        return self.path / name

    def tokenizer(self, name: str):
        """The ``tokenizers`` Tokenizer in bundle file ``name``; an unreadable one is a BundleError."""
        from tokenizers import Tokenizer

        path = self.file(name)
        try:
            return Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for a malformed file
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BundleError(f"{path} is not a readable tokenizer ({first})") from None

    def text(self, name: str) -> str:
        """The UTF-8 text of bundle file ``name``."""
        path = self.file(name)
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise BundleError(f"{path} is not readable UTF-8 text ({e})") from None

    def json(self, name: str):
        """The parsed JSON of bundle file ``name``."""
        try:
            return json.loads(self.text(name))
        except json.JSONDecodeError as e:
            raise BundleError(f"{self.path / name} is not valid JSON ({e})") from None

    def section(self, name: str) -> dict:
        value = self.manifest.get(name)
        if not isinstance(value, dict):
            raise BundleError(f"bundle {self.path}: the manifest's {name!r} section is missing or not a mapping")
        return value

    def int_field(self, section: str, key: str, minimum: int = 1, maximum: int = 1 << 31) -> int:
        """The integer ``manifest[section][key]``, checked to lie in ``minimum..maximum``."""
        value = self.section(section).get(key)
        if not _is_int(value) or not minimum <= value <= maximum:
            raise BundleError(
                f"bundle {self.path}: manifest {section}.{key} is {value!r}; expected an integer "
                f"from {minimum} to {maximum}"
            )
        return value

    @property
    def kind(self) -> str:
        return self.manifest["kind"]


def bundle_kind(path: str | Path) -> str | None:
    """The ``kind`` a bundle folder's manifest declares, or None when it has no readable manifest."""
    try:
        return json.loads((Path(path).expanduser() / MANIFEST).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None  # open_bundle reports it properly


def default_bundle(kind: str) -> Path:
    """The folder of the default preset of ``kind`` (models/presets.json)."""
    from edgemm.models import presets

    return models_dir() / presets()[kind]["default"]


def check_numbers(bundle: Bundle) -> None:
    """Every manifest number the runtime of this kind reads: an integer in range (BundleError otherwise)."""
    for section, fields in NUMBERS.get(bundle.kind, {}).items():
        for key, (low, high) in fields.items():
            bundle.int_field(section, key, low, high)
    if bundle.kind in ("llm", "vlm"):
        eos = bundle.section("special_tokens").get("eos_token_ids")
        if not isinstance(eos, list) or not all(_is_int(i) and i >= 0 for i in eos):
            raise BundleError(f"bundle {bundle.path}: manifest special_tokens.eos_token_ids is {eos!r}")
    if bundle.kind == "speech":
        heads = bundle.int_field("model", "decoder_attention_heads")
        if bundle.int_field("model", "d_model") % heads:
            raise BundleError(f"bundle {bundle.path}: manifest model.d_model is not a multiple of the heads")


def _check_files(folder: Path, manifest: dict, verify: bool) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"bundle {folder}: the manifest has no 'files' mapping (every file needs a hash)")
    for name, entry in files.items():
        if not name or "/" in name or "\\" in name or name in (".", "..", MANIFEST) or ".." in name:
            raise BundleError(f"bundle {folder}: the manifest lists {name!r}, which is not a plain file name")
        if not (isinstance(entry, dict) and _is_int(entry.get("bytes")) and entry["bytes"] >= 0):
            raise BundleError(f"bundle {folder}: the manifest entry of {name} has no integer 'bytes'")
        if not (isinstance(entry.get("sha256"), str) and SHA256.fullmatch(entry["sha256"])):
            raise BundleError(f"bundle {folder}: the manifest entry of {name} has no 64-hex-digit 'sha256'")
    for item in folder.iterdir():
        if item.name != MANIFEST and item.name not in files:
            raise BundleError(f"bundle {folder}: {item.name} is not listed in the manifest (refusing unhashed files)")
    for name, entry in files.items():
        file = folder / name
        if file.is_symlink() or (file.exists() and not file.is_file()):
            raise BundleError(f"bundle {folder}: {name} is not a regular file")
        if not file.exists():
            raise BundleError(f"bundle {folder} is incomplete: {name} is missing")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise BundleError(f"{file}: size {size} bytes, manifest expects {entry['bytes']} (truncated or replaced?)")
        if verify:
            actual = sha256_of(file)
            if actual != entry["sha256"]:
                raise BundleError(f"{file}: sha256 {actual} does not match the manifest's {entry['sha256']}")


def open_bundle(path: str | Path | None, kind: str, verify: bool = True) -> Bundle:
    """Open and check a bundle: manifest present and of the right kind, every file in the folder listed, of the
    right size and hash, and the manifest's numbers in range."""
    folder = Path(path).expanduser() if path else default_bundle(kind)
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        hint = " (run `make setup` to build the default bundles)" if path is None else ""
        raise BundleError(f"no model bundle at {folder}: {MANIFEST} is missing{hint}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path} is not a JSON object")
    if manifest.get("format") != FORMAT or manifest.get("kind") != kind:
        raise BundleError(
            f"{folder} is not a {kind} bundle (format={manifest.get('format')!r}, kind={manifest.get('kind')!r})"
        )
    _check_files(folder, manifest, verify)
    bundle = Bundle(folder, manifest, listed=True)
    check_numbers(bundle)
    return bundle
