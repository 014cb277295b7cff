"""Bad prompts, options and bundles for the LLM: one clear error, or correct handling; never a traceback."""

import dataclasses
import json
import logging
import shutil
import signal
import subprocess

import pytest

from edgemm.runtime.errors import BundleError, OptionsError
from edgemm.runtime.llm.chat import Chat, PromptError, clean_text
from edgemm.runtime.llm.generate import GenerationOptions
from edgemm.runtime.llm.model import ContextError, LanguageModel
from tests.conftest import flip_byte
from tests.harness import EDGEMM, edgemm


def _cli(*args, timeout=300, input=None):
    return edgemm(*args, timeout=timeout, input=input)


@pytest.fixture(scope="module")
def tiny_lm(tiny_llms):
    return tiny_llms["llama"][1]["fp32"]


@pytest.mark.parametrize("text", ["", "   \n\t ", "\x00\x01\x1b"])
def test_empty_prompt(text):
    with pytest.raises(PromptError, match="empty"):
        clean_text(text)


def test_invalid_utf8():
    with pytest.raises(PromptError, match="not valid UTF-8"):
        clean_text(b"caf\xe9 au lait")
    with pytest.raises(PromptError, match="not valid UTF-8"):
        clean_text("caf\udce9")  # what Python makes of undecodable bytes on the command line


def test_control_characters_are_removed():
    assert clean_text("a\x00b\x07c\x1b[31m\nd\te") == "abc[31m\nd\te"
    assert clean_text("caf\xc3\xa9".encode("latin-1")) == "café"


def test_prompt_longer_than_context(tiny_lm):
    lm = LanguageModel.load(tiny_lm, context=64)
    with pytest.raises(ContextError, match="context window is 64"):
        Chat(lm).send("fox " * 200)


def test_long_chat_drops_oldest_turns_once(tiny_lm, caplog):
    lm = LanguageModel.load(tiny_lm, context=128)
    lm.eos_ids = set()
    chat = Chat(lm, options=GenerationOptions(max_new_tokens=12))
    with caplog.at_level(logging.WARNING):
        for i in range(12):
            gen = chat.send(f"Turn {i}: the quick brown fox")
            gen.result()
            assert chat.cache.length <= 128
    assert 0 < len(chat.turns) < 12
    assert sum("dropping the oldest turns" in r.message for r in caplog.records) == 1


def test_answer_stops_at_the_context_window(tiny_lm):
    lm = LanguageModel.load(tiny_lm, context=48)
    lm.eos_ids = set()
    gen = Chat(lm, system="", options=GenerationOptions(max_new_tokens=500)).send("Hello")
    gen.result()
    assert gen.finish_reason == "context" and gen.cache.length == 48


@pytest.mark.parametrize(
    "options",
    [
        dict(max_new_tokens=0),
        dict(temperature=-1),
        dict(temperature=float("nan")),
        dict(top_p=0),
        dict(top_k=-2),
        dict(repetition_penalty=0),
        dict(stop=[""]),
        dict(stop=[3]),
    ],
)
def test_bad_options(options):
    """Options are checked once, when created."""
    with pytest.raises(OptionsError):
        GenerationOptions(**options)


def test_options_are_frozen():
    options = GenerationOptions(stop=["END"])
    assert options.stop == ("END",) and GenerationOptions(stop="END").stop == ("END",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_new_tokens = 0


def test_tampered_bundle(tiny_lm, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_lm, copy)
    flip_byte(copy / "decoder.onnx")
    with pytest.raises(BundleError, match="sha256"):
        LanguageModel.load(copy)
    out = _cli("ask", "hi", "--model", copy)
    assert out.returncode == 2
    assert out.stderr.startswith("edgemm: error:") and "Traceback" not in out.stderr


def test_cli_errors_are_one_line(tiny_lm, tmp_path):
    for args in (["ask", ""], ["ask", b"\xff\xfe"], ["ask", "hi", "--top-p", "2"], ["ask", "hi", "--model", tmp_path]):
        out = _cli(*args, "--model", tiny_lm) if args[-1] != tmp_path else _cli(*args)
        err = out.stderr
        assert out.returncode == 2, err
        assert err.startswith("edgemm: error:") and err.count("\n") == 1, err


def test_cli_ask_json(tiny_lm):
    out = _cli("ask", "What is the capital of France?", "--json", "--max-tokens", "8", "--model", tiny_lm)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert isinstance(result["answer"], str) and result["new_tokens"] <= 8


def test_cli_chat_session(tiny_lm):
    """/reset, /exit and end of input work; the conversation streams answers."""
    script = "Hello\n/reset\nWho are you?\n/exit\nnever read\n"
    out = _cli("chat", "--max-tokens", "6", "--model", tiny_lm, input=script)
    assert out.returncode == 0, out.stderr
    assert "conversation cleared" in out.stderr
    assert out.stdout.count("> ") >= 3


def test_ctrl_c_stops_only_the_answer(tiny_lm):
    """SIGINT during an answer ends that answer; the chat goes on and exits normally."""
    proc = subprocess.Popen(  # driven while it runs: not run to its end as the harness does
        [*EDGEMM, "chat", "--max-tokens", "100000", "--model", str(tiny_lm)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        proc.stdin.write(b"Tell me a long story\n")
        proc.stdin.flush()
        proc.stdout.read(40)  # the answer is streaming
        proc.send_signal(signal.SIGINT)
        proc.stdin.write(b"/exit\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert b"[stopped]" in out and b"Traceback" not in err


@pytest.mark.parametrize("kind", ["missing", "not-gguf", "truncated"])
def test_export_refuses_bad_sources(tmp_path, kind):
    pytest.importorskip("torch")
    source = tmp_path / "model.gguf"
    if kind == "not-gguf":
        source.write_bytes(b"not a model at all")
    elif kind == "truncated":
        source.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(40))
    out = _cli("export", "llm", "--source", source, "--out", tmp_path / "out")
    err = out.stderr
    assert out.returncode == 2 and err.startswith("edgemm: error:") and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
