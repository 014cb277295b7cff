"""Files shipped inside installed Python packages (weights, voices, recordings installed with ``pip --no-deps``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def installed(module: str) -> bool:
    """Whether a top-level module can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def package_dir(package: str) -> Path | None:
    """The folder of an installed package, or None when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def package_file(package: str, *parts: str) -> Path | None:
    """``package/parts...`` when the package is installed and the file is there, else None."""
    folder = package_dir(package)
    if folder is None:
        return None
    path = folder.joinpath(*parts)
    return path if path.exists() else None
