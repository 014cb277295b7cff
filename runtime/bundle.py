"""Model bundles: a folder with ``manifest.json`` listing every file with its size and sha256.

The manifest is the single place where model dimensions, special tokens and preprocessing parameters
live; the runtime reads them from here and never guesses them from a model's name.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgemm.runtime.errors import BundleError

MANIFEST = "manifest.json"
FORMAT = "edgemm-bundle/1"


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


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict

    def file(self, name: str) -> Path:
        return self.path / name

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


def open_bundle(path: str | Path | None, kind: str, verify: bool = True) -> Bundle:
    """Open and check a bundle: manifest present and of the right kind, every file of the right size and hash."""
    folder = Path(path).expanduser() if path else default_bundle(kind)
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        hint = " (run `make setup` to build the default bundles)" if path is None else ""
        raise BundleError(f"no model bundle at {folder}: {MANIFEST} is missing{hint}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path} is not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("kind") != kind:
        raise BundleError(
            f"{folder} is not a {kind} bundle (format={manifest.get('format')!r}, kind={manifest.get('kind')!r})"
        )
    for name, entry in manifest.get("files", {}).items():
        file = folder / name
        if not file.exists():
            raise BundleError(f"bundle {folder} is incomplete: {name} is missing")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise BundleError(f"{file}: size {size} bytes, manifest expects {entry['bytes']} (truncated or replaced?)")
        if verify:
            actual = sha256_of(file)
            if actual != entry["sha256"]:
                raise BundleError(f"{file}: sha256 {actual} does not match the manifest's {entry['sha256']}")
    return Bundle(folder, manifest)
