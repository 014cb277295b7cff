"""Putting a bundle into the models folder: built beside it in ``.incoming/``, checked in full, then moved into place
with one rename, so that a reader sees the old bundle or the new one and never half of one.

Bundles arrive by ``edgemm pull`` (runtime/hub.py) or ``edgemm bundle install`` (runtime/archive.py); both end here.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from edgemm.runtime.bundle import models_dir, open_declared
from edgemm.runtime.errors import BundleError

INCOMING = ".incoming"  # inside the models folder: the same file system, so a rename moves a bundle at once
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")  # a bundle's folder name: no separators, no dot-dot start


def check_name(name) -> str:
    """``name`` when it is a plain folder name for a bundle; a BundleError otherwise."""
    if not (isinstance(name, str) and NAME.fullmatch(name)) or ".." in name:
        raise BundleError(f"{name!r} is not a bundle name (letters, digits, '.', '_', '+', '-'; no folders)")
    return name


def incoming(models: Path | None = None) -> Path:
    """The folder where bundles are assembled before they move into place (created on demand)."""
    folder = (models_dir() if models is None else Path(models)) / INCOMING
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def staging(name: str, models: Path | None = None) -> Path:
    """A new empty folder in ``.incoming`` for bundle ``name``."""
    folder = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=incoming(models)))
    folder.chmod(0o755)  # mkdtemp's folder is private; a bundle is read by every user, as one that was built
    return folder


def place(staged: Path, name: str, models: Path | None = None, verify: bool = True) -> Path:
    """Check the bundle in ``staged`` (``verify``: every file's sha256 too) and move it to ``models``/``name``,
    replacing a bundle of that name. ``staged`` is gone afterwards, whether it was placed or refused."""
    models = models_dir() if models is None else Path(models)
    target = models / check_name(name)
    try:
        open_declared(staged, verify=verify)
        old = None
        if os.path.lexists(target):
            old = Path(tempfile.mkdtemp(prefix=f"{name}.old.", dir=incoming(models)))
            os.replace(target, old / name)
        os.replace(staged, target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
