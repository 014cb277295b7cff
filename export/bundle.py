"""Write a bundle folder atomically: files + manifest.json (sizes, sha256, everything the runtime needs)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edgemm.runtime.bundle import FORMAT, MANIFEST, file_entry


def write_manifest(folder: Path, kind: str, body: dict) -> dict:
    """Hash every file in ``folder`` and write ``manifest.json``; return the manifest."""
    files = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name != MANIFEST:
            p.chmod(0o644)  # some writers (onnx external data) create files readable by their owner only
            files[p.name] = file_entry(p)
    manifest = {"format": FORMAT, "kind": kind, **body, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@contextmanager
def staging(out: Path):
    """Build into a scratch folder beside ``out``; replace ``out`` only when the block succeeds.

    An interrupted or failed export leaves any existing bundle untouched.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield scratch
        with _locked(out):
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            if out.exists():
                out.rename(old)
            scratch.rename(out)
            if old.exists():
                shutil.rmtree(old)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)


@contextmanager
def _locked(out: Path):
    """Hold an exclusive lock on the folder holding ``out``: two exports into the same folder then replace it one
    after the other (the last one's bundle stays) instead of renaming over each other half-way. Locking the folder
    itself leaves no lock file behind."""
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
