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
    text: str | None
    source: str
    voice: str
    id: str


@dataclass
class HeldOut:
    audio: np.ndarray
    text: str


def synthetic_corpus(n: int = 6) -> list[Example]:
    """Noise (non-speech: text "") and sines (text unknown, as a recording without transcript) of 1 to 12 s: they
    fall in the 500 and 1500 frame buckets."""
    rng = np.random.default_rng(0)
    examples = []
    for i in range(n):
        seconds = (1.5, 4.0, 12.0)[i % 3]
        t = np.arange(int(seconds * 16000)) / 16000
        audio = 0.1 * np.sin(2 * np.pi * (200 + 50 * i) * t) if i % 2 else rng.normal(0, 0.05, len(t))
        text = None if i % 2 else ""
        examples.append(Example(audio.astype(np.float32), text, "synthetic", f"v{i % 2}", f"ex{i}"))
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
    warmup_steps=0,
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
    options = {**FAST, "targets_dir": targets, "warmup_steps": 2}  # the resumed step is past the warm-up
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


def test_student_trains_at_the_runtime_length():
    """A clip of 490 frames and a bit runs at 500 frames in the runtime (10 frames to spare), and is trained at 500
    too; 1 frame more and both move to 1000."""
    from edgemm.runtime.speech.transcribe import LENGTH_MARGIN, encoder_length

    config = train.DistillConfig(steps=1)
    assert config.margin_frames == LENGTH_MARGIN
    for samples, frames in ((490 * 160 + 100, 500), (491 * 160, 1000)):
        runtime = encoder_length(samples // 160, [500, 1000, 3000])  # what Transcriber._windows picks
        assert train.bucket_length(samples, [500, 1000, 3000], config.margin_frames) == runtime == frames


def test_learning_rate_warms_up_then_decays():
    config = train.DistillConfig(steps=1000, lr=1e-4, warmup_steps=100)
    rates = [train.learning_rate(step, config) for step in range(1000)]
    assert rates[0] == pytest.approx(1e-6) and rates[99] == pytest.approx(1e-4)
    assert all(a < b for a, b in zip(rates[:99], rates[1:100], strict=True))
    assert all(a > b for a, b in zip(rates[99:-1], rates[100:], strict=True))
    assert rates[399] == pytest.approx(5e-5)  # lr * sqrt(100 / 400)
    longer = train.DistillConfig(steps=5000, lr=1e-4, warmup_steps=100)  # a resumed run with more steps
    assert [train.learning_rate(step, longer) for step in range(1000)] == rates
    assert train.learning_rate(7, train.DistillConfig(steps=10, lr=1e-4, warmup_steps=0)) == 1e-4


def _cache(teacher: Path, folder: Path, **config) -> tuple:
    """A teacher-target cache for ``teacher`` with small settings (``config`` overrides them)."""
    from edgemm.export.whisper_source import load_whisper

    config = train.DistillConfig(**{"steps": 1, "lengths": (500, 3000), "topk": 16, "max_new_tokens": 12, **config})
    ck = load_whisper(str(teacher))
    ck.model.eval()
    return train.TeacherCache(ck, folder, train.Greedy(ck, max_new_tokens=12), config, "cpu"), ck.model, config


def test_non_speech_is_learnt_without_cross_entropy(teacher, tmp_path):
    """On noise the teacher guesses words: the student learns them only through KL (no cross-entropy), and a batch
    of non-speech alone has a cross-entropy of 0 and a finite loss."""
    cache, model, config = _cache(teacher, tmp_path)
    noise, sine = synthetic_corpus(2)
    assert not train.is_speech(noise) and train.is_speech(sine)
    noise_target, sine_target = cache.get(noise), cache.get(sine)
    assert not noise_target.text_loss and sine_target.text_loss
    with torch.no_grad():
        losses = train.distill_losses(model, [noise_target], config, "cpu")
        both = train.distill_losses(model, [noise_target, sine_target], config, "cpu")
        alone = train.distill_losses(model, [sine_target], config, "cpu")
    assert float(losses["ce"]) == 0 and np.isfinite(float(losses["loss"])) and float(losses["kd"]) >= 0
    assert float(both["ce"]) == pytest.approx(float(alone["ce"]), rel=1e-5)  # the noise adds no cross-entropy


def test_cached_targets_follow_the_settings(teacher, tmp_path):
    """A cached target made with another margin (so another encoder length) is recomputed, not reused."""
    example = synthetic_corpus(2)[1]  # 4 s
    assert _cache(teacher, tmp_path, margin_frames=200)[0].get(example).frames == 3000
    assert _cache(teacher, tmp_path)[0].get(example).frames == 500


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
        and manifest["distillation"]["kept_step"] == recipe["best"]["step"]
    )
    audio = np.random.default_rng(0).normal(0, 0.05, 16000 * 3).astype(np.float32)
    result = Transcriber.load(tmp_path / "bundle").transcribe(audio, 16000, TranscribeOptions(vad=False))
    assert result.duration == 3.0 and isinstance(result.text, str)


def test_teacher_bundle_is_the_built_preset(tmp_path, monkeypatch):
    """The student's WER is compared with the teacher's preset bundle of the same quantization, when it is built."""
    monkeypatch.setenv("EDGEMM_MODELS", str(tmp_path))
    assert train.teacher_bundle("packaged:whisper-tiny.en", "int8") is None
    (tmp_path / "whisper-tiny.en-int8").mkdir()
    (tmp_path / "whisper-tiny.en-int8" / "manifest.json").write_text("{}")
    assert train.teacher_bundle("packaged:whisper-tiny.en", "int8") == tmp_path / "whisper-tiny.en-int8"
    assert train.teacher_bundle("packaged:whisper-tiny.en", "fp32") is None
    assert train.teacher_bundle("some/other-whisper", "int8") is None


def test_trained_window_is_the_runtime_window(clips, transcriber, monkeypatch):
    """The student is trained on the window the runtime will encode: from the VAD's speech onset (whole frames),
    at the encoder length the runtime picks for it."""
    from edgemm.runtime.speech.audio import load_audio
    from edgemm.runtime.speech.transcribe import Transcriber, encoder_length

    vad, lengths = train.speech_vad(), [300, 500, 700, 1000, 1500, 3000]
    seen = []
    original = Transcriber._encode
    monkeypatch.setattr(
        Transcriber, "_encode", lambda self, s, seek, frames=None: seen.append(seek) or original(self, s, seek, frames)
    )
    for clip in clips[:5]:
        audio = load_audio(clip.path)
        seen.clear()
        transcriber.transcribe(audio)
        window = train.runtime_window(audio, vad)
        assert 0 < len(audio) - len(window) == seen[0] * 160  # LibriVox clips start with a little silence
        runtime_frames = encoder_length(len(audio) // 160 - seen[0], lengths)  # Transcriber.encoder_frames' input
        assert train.bucket_length(len(window), lengths, train.DistillConfig(steps=1).margin_frames) == runtime_frames
    noise = np.random.default_rng(0).normal(0, 0.01, 16000).astype(np.float32)
    assert train.runtime_window(noise, vad) is noise  # no speech: the whole clip, as vad=False decodes it


def test_frozen_decoder_trains_the_encoder_only(teacher, targets, tmp_path):
    from transformers import WhisperForConditionalGeneration

    options = {**FAST, "targets_dir": targets, "train_decoder": False}
    recipe = train.distill_speech(str(teacher), tmp_path, synthetic_corpus(4), steps=2, eval_every=2, **options)
    assert recipe["trained"] == "encoder (the decoder is the teacher's)"
    before = WhisperForConditionalGeneration.from_pretrained(teacher).state_dict()
    after = WhisperForConditionalGeneration.from_pretrained(tmp_path / "student").state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("model.encoder.") for name in changed), sorted(changed)[:5]
    with pytest.raises(ExportError, match="must train its decoder"):
        train.distill_speech(str(teacher), tmp_path / "b", synthetic_corpus(2), steps=1, decoder_layers=1, **options)
