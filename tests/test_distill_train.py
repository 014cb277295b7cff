"""The distillation loop (export/distill/train.py) on a tiny random Whisper teacher and synthetic audio."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tiny_whisper_folder

torch = pytest.importorskip("torch")
train = pytest.importorskip("edgemm.export.distill.train")

from edgemm.export.errors import ExportError  # noqa: E402
from edgemm.runtime.speech.transcribe import TranscribeOptions  # noqa: E402


@dataclass
class Example:
    audio: np.ndarray
    text: str
    source: str
    voice: str
    id: str


@dataclass
class HeldOut:
    audio: np.ndarray
    text: str


def synthetic_corpus(n: int = 6) -> list[Example]:
    """Noise and sines of 1 to 12 s: they fall in the 500 and 1500 frame buckets."""
    rng = np.random.default_rng(0)
    examples = []
    for i in range(n):
        seconds = (1.5, 4.0, 12.0)[i % 3]
        t = np.arange(int(seconds * 16000)) / 16000
        audio = 0.1 * np.sin(2 * np.pi * (200 + 50 * i) * t) if i % 2 else rng.normal(0, 0.05, len(t))
        examples.append(Example(audio.astype(np.float32), "", "synthetic", f"v{i % 2}", f"ex{i}"))
    return examples


FAST = dict(
    lengths=[500, 1000, 1500, 3000],
    batch_size=2,
    lr=3e-3,
    eval_clips=[],
    progress=False,
    max_new_tokens=12,
    topk=16,
    patience=0,
    device="cpu",
    keep_targets_in_memory=True,
)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return tiny_whisper_folder(tmp_path_factory.mktemp("distill-teacher"))


@pytest.fixture(scope="module")
def targets(tmp_path_factory) -> Path:
    """One teacher-target cache shared by the runs on `teacher` (each example's targets are computed once)."""
    return tmp_path_factory.mktemp("targets")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run where distillation has something to do: a teacher with a peaked next-token distribution (a random one
    is nearly uniform over 51864 tokens, so any student matches it), and a student started from a noisy copy."""
    from transformers import WhisperForConditionalGeneration

    root = tmp_path_factory.mktemp("distill")
    teacher = tiny_whisper_folder(root)
    model = WhisperForConditionalGeneration.from_pretrained(teacher)
    with torch.no_grad():
        model.model.decoder.embed_tokens.weight.mul_(20)
    model.save_pretrained(teacher)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(root / "init")
    shutil.copy(teacher / "tokenizer.json", root / "init" / "tokenizer.json")
    options = {**FAST, "lr": 1e-3}
    recipe = train.distill_speech(
        str(teacher),
        root / "run",
        synthetic_corpus(),
        steps=9,
        eval_every=3,
        student_init=str(root / "init"),
        **options,
    )
    return root / "run", recipe


def test_distillation_lowers_the_kd_loss(trained):
    out, recipe = trained
    log = json.loads((out / "log.json").read_text())
    kd = [r["kd"] for r in log["train"]]
    assert len(kd) == 9
    # One epoch is 3 batches: compare the first and the last epoch (the same batches in other orders).
    assert np.mean(kd[-3:]) < 0.5 * np.mean(kd[:3]), kd
    assert recipe["steps"] == 9 and recipe["examples"] == 6 and recipe["voices"] == 2
    assert {r["frames"] for r in log["train"]} == {500, 1500}


def test_student_folder_log_and_curve(trained):
    out, recipe = trained
    assert (out / "student" / "config.json").exists() and (out / "student" / "tokenizer.json").exists()
    from transformers import WhisperForConditionalGeneration

    WhisperForConditionalGeneration.from_pretrained(out / "student")
    log = json.loads((out / "log.json").read_text())
    assert [e["step"] for e in log["eval"]] == [3, 6, 9]
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "recipe.json").read_text())["encoder_lengths"] == [500, 1000, 1500, 3000]


def test_resume_continues_with_identical_losses(teacher, targets, tmp_path):
    corpus = synthetic_corpus(4)  # 2 batches an epoch: the resumed step starts the second epoch
    options = {**FAST, "targets_dir": targets}
    full = train.distill_speech(str(teacher), tmp_path / "full", corpus, steps=3, eval_every=2, **options)
    assert full["steps"] == 3
    train.distill_speech(str(teacher), tmp_path / "part", corpus, steps=2, eval_every=2, **options)
    train.distill_speech(str(teacher), tmp_path / "part", corpus, steps=3, eval_every=2, resume=True, **options)
    a = json.loads((tmp_path / "full" / "log.json").read_text())["train"]
    b = json.loads((tmp_path / "part" / "log.json").read_text())["train"]
    assert [r["step"] for r in b] == [1, 2, 3]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5, abs=1e-6)


def test_damaged_checkpoint_is_one_line_error(teacher, targets, tmp_path):
    corpus, options = synthetic_corpus(2), {**FAST, "targets_dir": targets}
    train.distill_speech(str(teacher), tmp_path, corpus, steps=1, eval_every=1, **options)
    (tmp_path / "checkpoint" / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError) as err:
        train.distill_speech(str(teacher), tmp_path, corpus, steps=2, eval_every=1, resume=True, **options)
    assert "damaged distillation checkpoint" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ExportError, match="resume=True"):
        train.distill_speech(str(teacher), tmp_path, corpus, steps=2, eval_every=1, **options)


def test_shrink_decoder_keeps_spaced_layers():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    def six_layers():
        config = WhisperConfig(
            vocab_size=100, d_model=16, encoder_layers=1, decoder_layers=6, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_source_positions=1500,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
        )  # fmt: skip
        return WhisperForConditionalGeneration(config)

    model = six_layers()
    layers = list(model.model.decoder.layers)
    assert train.shrink_decoder(model, 2) == [0, 5]
    assert list(model.model.decoder.layers) == [layers[0], layers[5]]
    assert model.config.decoder_layers == 2
    assert [m.self_attn.layer_idx for m in model.model.decoder.layers] == [0, 1]
    assert train.shrink_decoder(six_layers(), 3) == [0, 2, 5]  # linspace: 0, 2.5, 5
    with pytest.raises(ExportError):
        train.shrink_decoder(six_layers(), 7)


def test_bucket_length():
    assert train.bucket_length(16000, [500, 1000, 3000], 50) == 500
    assert train.bucket_length(16000 * 5, [500, 1000, 3000], 50) == 1000
    assert train.bucket_length(16000 * 40, [500, 1000, 3000], 50) == 3000


def test_smaller_decoder_and_wer_eval(teacher, targets, tmp_path):
    """A 1-layer decoder student, evaluated on held-out clips (student WER vs teacher WER)."""
    clips = [HeldOut(np.zeros(16000, np.float32), "hello world")]
    options = {**FAST, "eval_clips": clips, "targets_dir": targets}
    recipe = train.distill_speech(
        str(teacher), tmp_path, synthetic_corpus(2), steps=2, eval_every=1, decoder_layers=1, **options
    )
    assert recipe["decoder_layers_kept"] == [0]
    assert recipe["wer_teacher"] is not None and recipe["wer_student"] is not None
    from transformers import WhisperForConditionalGeneration

    assert WhisperForConditionalGeneration.from_pretrained(tmp_path / "student").config.decoder_layers == 1


def test_export_student(trained, tmp_path):
    """The student exports to a bundle that records its lengths and recipe, and the runtime loads and decodes it."""
    from edgemm.runtime.speech import Transcriber

    out, recipe = trained
    manifest = train.export_student(out / "student", tmp_path / "bundle", recipe, measure=False)
    assert manifest["model"]["encoder_lengths"] == recipe["encoder_lengths"]
    assert (
        manifest["distillation"]["teacher"] == recipe["teacher"]
        and manifest["distillation"]["steps"] == recipe["steps"]
    )
    audio = np.random.default_rng(0).normal(0, 0.05, 16000 * 3).astype(np.float32)
    result = Transcriber.load(tmp_path / "bundle").transcribe(audio, 16000, TranscribeOptions(vad=False))
    assert result.duration == 3.0 and isinstance(result.text, str)
