"""Output files written whole or not at all: into a temporary file beside the target, renamed into place only once
every byte is on disk, so a full disk or a killed process never leaves a truncated file under the name asked for."""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from edgemm.runtime.errors import EdgemmError


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, creating its folder. A target that is not a regular file (/dev/null,
    /dev/full, a pipe) cannot be renamed over and is written directly. Any failure is one EdgemmError naming
    ``path`` and the system's reason; the temporary file is removed."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        info = None
    except OSError as e:
        raise EdgemmError(f"cannot write {path}: {e.strerror}") from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise EdgemmError(f"{path} is a folder: give the file to write")
    try:
        if info is not None and not stat.S_ISREG(info.st_mode):
            with open(path, "wb") as f:
                f.write(data)
        else:  # a symbolic link to a file: the file it names is replaced, the link stays
            _replace(path.resolve() if path.is_symlink() else path, data)
    except OSError as e:  # no permission, a full disk (ENOSPC), a file size limit (EFBIG), ...
        raise EdgemmError(f"cannot write {path}: {e.strerror or e}") from None


def _replace(target: Path, data: bytes) -> None:
    if target.parent.exists() and not target.parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{target.parent} is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name[:200]}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to any new file
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
