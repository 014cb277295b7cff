"""Bundles as single files: ``edgemm bundle pack`` writes one, ``edgemm bundle install`` puts one in place.

A bundle file is a tar archive (gzip, bzip2 or xz compressed ones are read too) of, in this order:
``edgemm-bundle.json`` (``{"format": "edgemm-archive/1", "name": ..., "kind": ...}``), ``NAME/manifest.json``, then
``NAME/FILE`` for each file the manifest lists. Installing reads it as a stream, one pass, a block at a time, so a
2 GB bundle needs neither 2 GB of memory nor a temporary copy of the archive; each member is hashed as it is written
and checked against the manifest before the bundle moves into place (runtime/install.py). Anything else in the
archive (another name, a link, a folder, a device, a member larger than the manifest says, an unknown format) is
refused, in one line, before it is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from edgemm.runtime.bundle import FORMAT, MANIFEST, MAX_MANIFEST_BYTES, check_file_list, open_declared
from edgemm.runtime.errors import BundleError
from edgemm.runtime.install import check_name, place, staging

ARCHIVE_FORMAT = "edgemm-archive/1"
HEADER = "edgemm-bundle.json"
MAX_HEADER_BYTES = 64 << 10
BLOCK = 1 << 20  # bytes read and written at a time
URL_TIMEOUT_S = 30  # a server that sends nothing for this long ends the install


def _member(name: str, size: int, mode: int = 0o644) -> tarfile.TarInfo:
    """A tar member with fixed owner, mode and time, so that packing the same bundle twice gives the same file."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, 0
    return info


def pack(source: str | Path, out: Path | None = None) -> Path:
    """Pack the bundle ``source`` (a folder, or a name in the models folder) into one file, ``out`` or
    ``NAME.tar`` here. The bundle is verified first: a damaged one is never packed."""
    bundle = open_declared(source, verify=True)
    folder, manifest, kind = bundle.path, bundle.manifest, bundle.kind
    name = check_name(manifest.get("name") if isinstance(manifest.get("name"), str) else folder.name)
    out = Path(out) if out else Path(f"{name}.tar")
    partial = out.with_name(out.name + ".partial")
    header = json.dumps({"format": ARCHIVE_FORMAT, "name": name, "kind": kind}).encode()
    try:
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_member(HEADER, len(header)), io.BytesIO(header))
            for file in [MANIFEST, *manifest["files"]]:
                with open(folder / file, "rb") as f:
                    tar.addfile(_member(f"{name}/{file}", os.fstat(f.fileno()).st_size), f)
        os.replace(partial, out)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise BundleError(f"cannot write {out}: {e.strerror}") from None
    return out


def _open_source(source: str):
    """A readable binary stream of the archive at ``source``: a file path, or an http(s)/file URL."""
    if source.startswith(("http://", "https://", "file://")):
        try:
            return urllib.request.urlopen(source, timeout=URL_TIMEOUT_S)  # noqa: S310 (the user's own URL)
        except urllib.error.HTTPError as e:
            raise BundleError(f"cannot download {source}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
            raise BundleError(f"cannot download {source}: {reason}") from None
    try:
        return open(source, "rb")
    except OSError as e:
        raise BundleError(f"cannot read {source}: {e.strerror}") from None


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int, what: str) -> bytes:
    if not member.isreg():
        raise BundleError(f"the archive's {what} {member.name!r} is not a regular file")
    if member.size > limit:
        raise BundleError(f"the archive's {what} is {member.size:,} bytes, over the {limit:,}-byte limit")
    return tar.extractfile(member).read(limit + 1)


def _next(tar: tarfile.TarFile, what: str) -> tarfile.TarInfo:
    member = tar.next()
    if member is None:
        raise BundleError(f"the archive ends before {what}")
    return member


def _header(tar: tarfile.TarFile) -> dict:
    member = _next(tar, f"its {HEADER}")
    if member.name != HEADER:
        raise BundleError(f"not an edgemm bundle file: it starts with {member.name!r}, not {HEADER}")
    try:
        header = json.loads(_read_small(tar, member, MAX_HEADER_BYTES, HEADER))
    except ValueError:
        raise BundleError(f"the archive's {HEADER} is not valid JSON") from None
    if not isinstance(header, dict) or header.get("format") != ARCHIVE_FORMAT:
        shown = header.get("format") if isinstance(header, dict) else header
        raise BundleError(f"the archive's format is {shown!r}; this edgemm reads {ARCHIVE_FORMAT} (upgrade edgemm?)")
    check_name(header.get("name"))
    return header


def _manifest(tar: tarfile.TarFile, name: str, folder: Path) -> dict:
    member = _next(tar, f"its {MANIFEST}")
    if member.name != f"{name}/{MANIFEST}":
        raise BundleError(f"the archive's second member is {member.name!r}, not {name}/{MANIFEST}")
    data = _read_small(tar, member, MAX_MANIFEST_BYTES, MANIFEST)
    (folder / MANIFEST).write_bytes(data)
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError):
        raise BundleError(f"the archive's {MANIFEST} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"the archive's {MANIFEST} is not an {FORMAT} manifest")
    files = check_file_list(folder, manifest)
    need, free = sum(entry["bytes"] for entry in files.values()), shutil.disk_usage(folder).free
    if need > free:
        raise BundleError(f"{name} needs {need / 1e6:,.0f} MB and the models folder has {free / 1e6:,.0f} MB free")
    return manifest


def _refuse_member(member: tarfile.TarInfo, name: str, files: dict, written: set) -> str:
    """The listed file ``member`` holds; a BundleError for anything else."""
    path = member.name
    if path.startswith("/") or ".." in path.split("/"):
        raise BundleError(f"the archive member {path!r} points outside the bundle (path traversal refused)")
    if not member.isreg():
        what = "a link" if member.issym() or member.islnk() else "a folder" if member.isdir() else "a special file"
        raise BundleError(f"the archive member {path!r} is {what}; a bundle holds regular files only")
    folder, _, file = path.partition("/")
    if folder != name or file not in files:
        raise BundleError(f"the archive member {path!r} is not a file the manifest of {name} lists")
    if file in written:
        raise BundleError(f"the archive holds {path!r} twice")
    if member.size != files[file]["bytes"]:
        raise BundleError(
            f"the archive member {path!r} is {member.size:,} bytes; the manifest says {files[file]['bytes']:,}"
        )
    return file


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, sha256: str) -> None:
    digest = hashlib.sha256()
    source = tar.extractfile(member)
    with open(target, "xb") as out:
        while block := source.read(BLOCK):
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != sha256:
        raise BundleError(f"the archive's {member.name} does not match its sha256 in the manifest (damaged or altered)")


def _unpack(stream, folder: Path) -> str:
    """Write the archive read from ``stream`` into ``folder``; the bundle's name."""
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        name = _header(tar)["name"]
        files = _manifest(tar, name, folder)["files"]
        written: set[str] = set()
        while len(written) < len(files):
            member = _next(tar, f"the last {len(files) - len(written)} of the files of {name}")
            file = _refuse_member(member, name, files, written)
            _write_member(tar, member, folder / file, files[file]["sha256"])
            written.add(file)
        if tar.next() is not None:
            raise BundleError(f"the archive holds more than the files of {name}")
    return name


def install(source: str | Path, models: Path | None = None) -> Path:
    """Install the bundle file at ``source`` (a path or a URL) into ``models`` (default: the models folder),
    replacing a bundle of the same name; its folder."""
    stream = _open_source(str(source))
    folder = staging("archive", models)
    try:
        with stream:
            name = _unpack(stream, folder)
    except (tarfile.TarError, EOFError, OSError, BundleError) as e:
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(e, BundleError):
            raise BundleError(f"{source}: {e}") from None
        reason = "it ends early (truncated?)" if isinstance(e, EOFError) or "unexpected end" in str(e) else e
        raise BundleError(f"{source} is not a readable bundle file: {reason}") from None
    return place(folder, name, models, verify=False)  # every file was hashed as it was written
