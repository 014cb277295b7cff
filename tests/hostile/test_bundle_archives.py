"""`edgemm bundle pack` / `edgemm bundle install`: a bundle file round-trips, and every bad archive (a path out of
the bundle, a link, a member larger than its manifest says, a wrong hash, an unknown format, a truncated or foreign
file) is refused in one line, leaves nothing behind and replaces nothing. Installing streams: its memory does not
grow with the bundle."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from edgemm.runtime.archive import ARCHIVE_FORMAT, HEADER
from edgemm.runtime.bundle import MANIFEST, file_entry, open_bundle, sha256_of
from tests.harness import edgemm


@pytest.fixture(scope="module")
def packed(vision_bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "vision.tar"
    ran = edgemm("bundle", "pack", str(vision_bundle), "-o", str(out))
    assert ran.returncode == 0, ran.stderr
    return out


def _members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(archive) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]


def _write(members, out: Path) -> Path:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out


def _install(archive: Path, models: Path):
    return edgemm("bundle", "install", str(archive), env={**os.environ, "EDGEMM_MODELS": str(models)})


def _nothing_left(models: Path, name: str) -> None:
    assert not (models / name).exists()
    assert not any((models / ".incoming").iterdir()) if (models / ".incoming").exists() else True


def test_a_packed_bundle_installs_identical_and_verified(vision_bundle, packed, tmp_path):
    ran = _install(packed, tmp_path)
    assert ran.returncode == 0, ran.stderr
    installed = tmp_path / vision_bundle.name
    assert sorted(p.name for p in installed.iterdir()) == sorted(p.name for p in vision_bundle.iterdir())
    assert all(sha256_of(p) == sha256_of(vision_bundle / p.name) for p in installed.iterdir())
    open_bundle(installed, "vision", verify=True)
    _nothing_left(tmp_path, "no-such")  # .incoming is empty again
    again = tmp_path / "again.tar"  # packing is deterministic: the same bundle gives the same file
    assert edgemm("bundle", "pack", str(installed), "-o", str(again)).returncode == 0
    assert sha256_of(again) == sha256_of(packed)


def _edited(packed: Path, tmp_path: Path, edit) -> Path:
    members = _members(packed)
    edit(members)
    return _write(members, tmp_path / "bad.tar")


def _rename(index: int, name: str):
    def edit(members):
        members[index][0].name = name

    return edit


def _link(members):
    info, _ = members[-1]
    link = tarfile.TarInfo(info.name)
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    members[-1] = (link, None)


def _oversize(members):
    info, data = members[-1]
    info.size = len(data) + 4096
    members[-1] = (info, data + b"\0" * 4096)


def _flip(members):
    info, data = members[-1]
    members[-1] = (info, bytes([data[0] ^ 1]) + data[1:])


def _format(members):
    header = json.dumps({"format": "edgemm-archive/9", "name": "x", "kind": "vision"}).encode()
    info = tarfile.TarInfo(HEADER)
    info.size = len(header)
    members[0] = (info, header)


def _extra(members):
    info = tarfile.TarInfo(members[1][0].name.split("/")[0] + "/extra.onnx")
    info.size = 3
    members.append((info, b"abc"))


def _drop_last(members):
    members.pop()


@pytest.mark.parametrize(
    "edit, words",
    [
        (_rename(-1, "../../evil.onnx"), "path traversal refused"),
        (_rename(-1, "/etc/evil.onnx"), "path traversal refused"),
        (_link, "is a link"),
        (_oversize, "the manifest says"),
        (_flip, "does not match its sha256"),
        (_format, "this edgemm reads " + ARCHIVE_FORMAT),
        (_extra, "more than the files of"),
        (_drop_last, "ends before the last 1 of the files"),
        (_rename(0, "other.json"), "not an edgemm bundle file"),
    ],
)
def test_a_bad_archive_is_refused_in_one_line_and_leaves_nothing(vision_bundle, packed, tmp_path, edit, words):
    bad = _edited(packed, tmp_path, edit)
    models = tmp_path / "models"
    line = _install(bad, models).one_line_error()
    assert words in line and str(bad) in line, line
    _nothing_left(models, vision_bundle.name)
    assert not (tmp_path.parent / "evil.onnx").exists()


def test_truncated_and_foreign_files_are_refused(vision_bundle, packed, tmp_path):
    models = tmp_path / "models"
    truncated = tmp_path / "cut.tar"
    truncated.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    assert "ends early" in _install(truncated, models).one_line_error()
    foreign = tmp_path / "noise.tar"
    foreign.write_bytes(os.urandom(100_000))
    assert "not a readable bundle file" in _install(foreign, models).one_line_error()
    assert "No such file" in _install(tmp_path / "missing.tar", models).one_line_error()
    _nothing_left(models, vision_bundle.name)


def test_a_refused_archive_keeps_the_bundle_already_installed(vision_bundle, packed, tmp_path):
    assert _install(packed, tmp_path).returncode == 0
    before = {p.name: sha256_of(p) for p in (tmp_path / vision_bundle.name).iterdir()}
    _install(_edited(packed, tmp_path, _flip), tmp_path).one_line_error()
    assert {p.name: sha256_of(p) for p in (tmp_path / vision_bundle.name).iterdir()} == before


def test_install_streams_a_large_bundle_in_bounded_memory(vision_bundle, tmp_path):
    """A bundle with a 600 MB file installs with the memory of a small one (it is never held whole)."""
    big = tmp_path / "big"
    shutil.copytree(vision_bundle, big)
    with open(big / "padding.bin", "wb") as f:
        for _ in range(600):
            f.write(os.urandom(1 << 20))
    manifest = json.loads((big / MANIFEST).read_text())
    manifest["files"]["padding.bin"] = file_entry(big / "padding.bin")
    (big / MANIFEST).write_text(json.dumps(manifest))
    archive = tmp_path / "big.tar"
    assert edgemm("bundle", "pack", str(big), "-o", str(archive)).returncode == 0
    shutil.rmtree(big)
    small = _install(tmp_path / "big.tar", tmp_path / "models")
    assert small.returncode == 0, small.stderr
    assert small.peak_mb < 200, small.peak_mb
