"""Distil a Whisper student whose encoder runs on the audio's own length (not on a padded 30 s window).

``distill_speech`` trains it on the teacher's pseudo-labels, token distributions and encoder states, on the windows
the runtime will give it; ``export_student`` turns it into an int8 bundle. The recipe: docs/EXPORT.md,
"Distilling the speech student".
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edgemm.export.errors import ExportError
from edgemm.export.whisper_onnx import encode_frames
from edgemm.export.whisper_source import WhisperCheckpoint, load_whisper
from edgemm.runtime.speech.decoding import LogitFilters
from edgemm.runtime.speech.features import HOP_LENGTH, N_FRAMES, SAMPLE_RATE, LogMel, pad_or_trim
from edgemm.runtime.speech.tokenizer import SpecialTokens, WhisperTokenizer
from edgemm.runtime.speech.transcribe import LENGTH_MARGIN, encoder_length

log = logging.getLogger(__name__)

DEFAULT_LENGTHS = (300, 500, 700, 1000, 1500, 3000)  # encoder lengths in mel frames (100 per second)
DEFAULT_WEIGHTS = {"ce": 1.0, "kd": 1.0, "enc": 1.0}
CHECKPOINT = "checkpoint"  # folder under out/


# ----------------------------------------------------------------------------------------------------------------
# Model surgery and small helpers


def shrink_decoder(model, layers: int):
    """Keep ``layers`` maximally spaced decoder layers of ``model`` (in place; returns the kept teacher indices).

    As distil-whisper: the first and the last layer are always kept, the others evenly spaced between them.
    """
    decoder = model.model.decoder
    n = len(decoder.layers)
    if not 1 <= layers <= n:
        raise ExportError(f"decoder_layers must be between 1 and {n}, got {layers}")
    keep = [0] if layers == 1 else sorted({int(round(i)) for i in np.linspace(0, n - 1, layers)})
    decoder.layers = nn.ModuleList([decoder.layers[i] for i in keep])
    for new_index, layer in enumerate(decoder.layers):  # the KV cache is indexed by layer_idx
        for attn in (layer.self_attn, layer.encoder_attn):
            if hasattr(attn, "layer_idx"):
                attn.layer_idx = new_index
    model.config.decoder_layers = len(keep)
    return keep


def bucket_length(n_samples: int, lengths: Sequence[int], margin_frames: int) -> int:
    """The smallest encoder length (mel frames) covering ``n_samples`` of audio plus a margin; the largest if none.
    Whole frames, as the runtime counts them."""
    return encoder_length(n_samples // HOP_LENGTH, sorted(lengths), margin_frames)


def _tokenizer(ck: WhisperCheckpoint) -> tuple[WhisperTokenizer, dict]:
    from tokenizers import Tokenizer

    from edgemm.export.speech import special_tokens

    tokens = special_tokens(ck)
    return WhisperTokenizer(Tokenizer.from_file(str(ck.tokenizer_file)), SpecialTokens.from_manifest(tokens)), tokens


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------------------------
# Greedy decoding in PyTorch (teacher pseudo-labels, held-out WER)


class Greedy:
    """Whisper greedy decoding with a KV cache and the runtime's token rules (suppression, timestamps)."""

    def __init__(self, ck: WhisperCheckpoint, timestamps: bool = True, max_new_tokens: int = 224):
        self.tokenizer, tokens = _tokenizer(ck)
        s = self.tokenizer.special
        extra = [s.translate, s.transcribe, s.sot, s.sot_prev, s.no_speech]  # as the runtime's WindowDecoder
        self.suppress = np.array(sorted(set(tokens["suppress"]) | set(extra)), dtype=np.int64)
        self.suppress_begin = np.array(tokens["suppress_begin"], dtype=np.int64)
        self.timestamps = timestamps
        self.prefix = self.tokenizer.sot_sequence("en", "transcribe", timestamps)
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def __call__(self, model, hidden: torch.Tensor) -> list[int]:
        """Tokens after the prefix (ending with end-of-text unless cut) for encoder states ``hidden`` [1, T, D]."""
        eot = self.tokenizer.special.eot
        room = model.config.max_target_positions - len(self.prefix)
        filters = LogitFilters(self.suppress, self.suppress_begin, self.tokenizer, self.timestamps, len(self.prefix))
        sequence, past = list(self.prefix), None
        step = torch.tensor([sequence], device=hidden.device)
        for _ in range(min(self.max_new_tokens, room)):
            out = model(encoder_outputs=(hidden,), decoder_input_ids=step, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[:, -1].float().cpu().numpy()
            filters.apply(logits, [sequence])
            token = int(logits[0].argmax())
            sequence.append(token)
            if token == eot:
                break
            step = torch.tensor([[token]], device=hidden.device)
        return sequence[len(self.prefix) :]


# ----------------------------------------------------------------------------------------------------------------
# Teacher targets


@dataclass
class Target:
    """What the student learns from for one example (all on CPU)."""

    frames: int  # the student's encoder length (mel frames)
    student_mel: torch.Tensor  # [n_mels, frames]
    sequence: list[int]  # prefix + teacher tokens (with end-of-text)
    prefix_len: int
    encoder: torch.Tensor  # teacher encoder states [frames / 2, d_model], float16
    topk_ids: torch.Tensor  # [len(sequence) - 1, k] teacher's top-k next tokens at each position
    topk_logprobs: torch.Tensor  # [len(sequence) - 1, k] their log-probabilities at `temperature`
    temperature: float
    text_loss: bool = True  # False for non-speech: the teacher's words there are guesses, learnt only through KL
    settings: dict = field(default_factory=dict)  # what it was computed with (TeacherCache.settings)


class TeacherCache:
    """Teacher targets per example id, computed once and kept on disk (survives a resume)."""

    def __init__(self, ck: WhisperCheckpoint, folder: Path, greedy: Greedy, config: DistillConfig, device):
        self.ck, self.folder, self.greedy, self.config, self.device = ck, folder, greedy, config, device
        self.mel = LogMel(n_mels=ck.model.config.num_mel_bins)
        self.vad = speech_vad() if config.vad_window else None
        self.folder.mkdir(parents=True, exist_ok=True)
        self.memory: dict[str, Target] = {}

    def _path(self, example_id: str) -> Path:
        return self.folder / (hashlib.sha1(str(example_id).encode()).hexdigest()[:20] + ".pt")

    def get(self, example) -> Target:
        key = str(example.id)
        if key in self.memory:
            return self.memory[key]
        path = self._path(key)
        target = None
        if path.exists():
            try:
                target = Target(**torch.load(path, weights_only=False))
            except Exception:  # a damaged or outdated cache file: recompute it
                target = None
            if target is not None and not self.fits(target, example):
                target = None
        if target is None:
            target = self.compute(example)
            tmp = path.with_suffix(".tmp")
            torch.save(asdict(target), tmp)
            tmp.replace(path)
        if self.config.keep_targets_in_memory:
            self.memory[key] = target
        return target

    def settings(self, example) -> dict:
        """Everything a target depends on besides the teacher and the audio: a cached target made with other
        settings is recomputed."""
        c = self.config
        return {
            "lengths": list(c.lengths),
            "margin_frames": c.margin_frames,
            "vad_window": c.vad_window,
            "topk": c.topk,
            "temperature": c.temperature,
            "max_new_tokens": c.max_new_tokens,
            "timestamps": c.timestamps,
            "text_loss": is_speech(example),
        }

    def fits(self, target: Target, example) -> bool:
        return target.settings == self.settings(example)

    @torch.no_grad()
    def compute(self, example) -> Target:
        audio = runtime_window(np.asarray(example.audio, dtype=np.float32), self.vad)[: N_FRAMES * HOP_LENGTH]
        frames = bucket_length(len(audio), self.config.lengths, self.config.margin_frames)
        # The student's mel is computed on the audio padded to its own length, as the runtime will.
        student_mel = torch.from_numpy(self.mel(pad_or_trim(audio, frames * HOP_LENGTH)))
        teacher_mel = torch.from_numpy(self.mel(pad_or_trim(audio)))[None].to(self.device)
        model = self.ck.model
        hidden = model.model.encoder(teacher_mel).last_hidden_state
        tokens = self.greedy(model, hidden)
        sequence = self.greedy.prefix + tokens
        logits = model(encoder_outputs=(hidden,), decoder_input_ids=torch.tensor([sequence[:-1]], device=self.device))
        k = min(self.config.topk, logits.logits.shape[-1])
        logprobs = nn.functional.log_softmax(logits.logits[0].float() / self.config.temperature, dim=-1)
        top = logprobs.topk(k, dim=-1)
        return Target(
            frames=frames,
            student_mel=student_mel,
            sequence=sequence,
            prefix_len=len(self.greedy.prefix),
            encoder=hidden[0, : frames // 2].to(torch.float16).cpu(),
            topk_ids=top.indices.cpu(),
            topk_logprobs=top.values.cpu(),
            temperature=self.config.temperature,
            text_loss=is_speech(example),
            settings=self.settings(example),
        )


def speech_vad():
    """The runtime's Silero VAD (the model the speech bundles carry), or None when silero-vad is not installed."""
    from edgemm.export.speech import silero_vad_model
    from edgemm.runtime.speech.vad import SileroVAD

    path = silero_vad_model()
    if path is None:
        log.warning("silero-vad is not installed: students are trained on whole clips, not on the VAD's windows")
        return None
    return SileroVAD(path)


def runtime_window(audio: np.ndarray, vad) -> np.ndarray:
    """``audio`` from where the runtime's first window starts: the first speech region the VAD finds, to the end
    (``Transcriber`` jumps there, whole frames, and encodes from it). Without ``vad``, or without speech, the whole
    clip (as ``vad=False`` decodes it)."""
    regions = vad.speech_regions(audio) if vad is not None else []
    return audio[regions[0][0] // HOP_LENGTH * HOP_LENGTH :] if regions else audio


def is_speech(example) -> bool:
    """Whether ``example`` may hold speech: only audio known to be non-speech (text "") is not.

    On noise and silence Whisper guesses words ("you", "I'm going to go to the next one.") with a low log-probability
    and a high no-speech probability, and the runtime drops such a window by exactly those two numbers. Cross-entropy on
    those words would make the student sure of them, so non-speech is learnt through the KL terms alone (which carry
    the teacher's no-speech probability at the first position and its doubt after it)."""
    return getattr(example, "text", None) != ""


# ----------------------------------------------------------------------------------------------------------------
# Losses


def _with_tail(logprobs: torch.Tensor) -> torch.Tensor:
    """[N, k] log-probabilities of k tokens -> [N, k + 1] with the log-mass of all the other tokens appended."""
    rest = (1 - logprobs.exp().sum(-1, keepdim=True)).clamp_min(1e-8).log()
    return torch.cat([logprobs, rest], dim=-1)


def topk_kl(teacher_logprobs: torch.Tensor, student_logprobs: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || student) over the teacher's top-k tokens and "any other token" ([N, k] log-probabilities
    of the same tokens under each model; they need not sum to one)."""
    t, s = _with_tail(teacher_logprobs), _with_tail(student_logprobs)
    return (t.exp() * (t - s)).sum(-1).mean()


def distill_losses(student, batch: list[Target], config: DistillConfig, device) -> dict[str, torch.Tensor]:
    """Cross-entropy, KL and encoder MSE of one batch (all examples of one encoder length)."""
    mel = torch.stack([t.student_mel for t in batch]).to(device)
    hidden = encode_frames(student.model.encoder, mel)
    teacher_enc = torch.stack([t.encoder for t in batch]).to(device, torch.float32)
    enc_loss = nn.functional.mse_loss(hidden, teacher_enc)

    eot = batch[0].sequence[-1]
    width = max(len(t.sequence) - 1 for t in batch)
    inputs = torch.full((len(batch), width), eot, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    k = batch[0].topk_ids.shape[-1]
    top_ids = torch.zeros((len(batch), width, k), dtype=torch.long)
    top_logprobs = torch.zeros((len(batch), width, k))
    for i, t in enumerate(batch):
        n = len(t.sequence) - 1
        inputs[i, :n] = torch.tensor(t.sequence[:-1])
        # Only the tokens the teacher produced are targets, not the fixed start sequence.
        labels[i, t.prefix_len - 1 : n] = torch.tensor(t.sequence[t.prefix_len :])
        top_ids[i, :n], top_logprobs[i, :n] = t.topk_ids, t.topk_logprobs
    text_loss = torch.tensor([t.text_loss for t in batch])[:, None]
    inputs, labels, top_ids, top_logprobs, text_loss = (
        x.to(device) for x in (inputs, labels, top_ids, top_logprobs, text_loss)
    )
    logits = student(encoder_outputs=(hidden,), decoder_input_ids=inputs).logits.float()
    mask = labels != -100
    text = mask & text_loss

    # A batch of non-speech alone has no text to learn: its cross-entropy is 0 (still a tensor, for the log).
    ce = nn.functional.cross_entropy(logits[text], labels[text]) if text.any() else logits.sum() * 0
    temp = config.temperature
    kd = topk_kl(top_logprobs[mask], nn.functional.log_softmax(logits / temp, dim=-1).gather(-1, top_ids)[mask])
    kd = kd * temp**2
    w = config.weights
    total = w["ce"] * ce + w["kd"] * kd + w["enc"] * enc_loss
    return {"loss": total, "ce": ce, "kd": kd, "enc": enc_loss}


# ----------------------------------------------------------------------------------------------------------------
# Configuration, batches, checkpoints


@dataclass
class DistillConfig:
    steps: int
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    decoder_layers: int | None = None
    eval_every: int = 200
    batch_size: int = 8
    lr: float = 3e-5
    weight_decay: float = 0.01
    seed: int = 0
    temperature: float = 2.0
    weights: dict = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    topk: int = 64
    margin_frames: int = LENGTH_MARGIN  # frames of padding after the audio: the runtime's, so each clip is trained
    # at the encoder length it will run at
    warmup_steps: int = 100  # the learning rate rises linearly over these steps, then falls as 1 / sqrt(step)
    max_new_tokens: int = 224
    timestamps: bool = True  # pseudo-labels with segment timestamps (as the runtime decodes by default)
    vad_window: bool = True  # train (and evaluate) on the window the runtime's VAD gives: from the speech onset
    patience: int = 5  # evaluations without improvement before stopping (0: never stop early)
    max_grad_norm: float = 1.0
    keep_targets_in_memory: bool = False  # else read from the disk cache per batch
    train_decoder: bool = True  # False: only the encoder learns; the decoder stays the teacher's


def learning_rate(step: int, config: DistillConfig) -> float:
    """The learning rate of update ``step`` (0-based): a linear warm-up over ``warmup_steps``, then ``lr`` x
    sqrt(warmup / step). It does not depend on the total number of steps, so a run resumed with more steps
    continues exactly as an uninterrupted one."""
    if config.warmup_steps <= 0:
        return config.lr
    n = step + 1
    return config.lr * min(n / config.warmup_steps, math.sqrt(config.warmup_steps / n))


def batch_schedule(frames: dict[str, int], batch_size: int, seed: int, epoch: int) -> list[list[str]]:
    """One epoch of batches (lists of example ids), each from a single encoder length; a pure function of its
    arguments, so that a resumed run draws exactly the batches an uninterrupted one would."""
    rng = np.random.default_rng([seed, epoch])
    buckets: dict[int, list[str]] = {}
    for key in sorted(frames):
        buckets.setdefault(frames[key], []).append(key)
    batches = []
    for n in sorted(buckets):
        ids = [buckets[n][i] for i in rng.permutation(len(buckets[n]))]
        batches += [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def save_checkpoint(folder: Path, student, optimizer, step: int, history: dict) -> None:
    """Student, optimizer, step, history and RNG states; written to a temporary folder and renamed into place."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(
        {"student": student.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "rng": _rng_state()},
        tmp / "state.pt",
    )
    (tmp / "history.json").write_text(json.dumps(history))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, student, optimizer) -> tuple[int, dict]:
    """Restore what :func:`save_checkpoint` wrote; a damaged checkpoint raises a one-line ExportError."""
    try:
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
        history = json.loads((folder / "history.json").read_text())
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        return int(state["step"]), history
    except Exception as e:  # truncated/garbled files, another model's weights, missing keys
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"damaged distillation checkpoint {folder}: {reason[:200]}") from None


# ----------------------------------------------------------------------------------------------------------------
# Evaluation, curve


def _clip_audio(clip) -> np.ndarray:
    audio = getattr(clip, "audio", None)
    if audio is None:
        from edgemm.runtime.speech.audio import load_audio

        audio = load_audio(clip.path)
    return np.asarray(audio, dtype=np.float32)


@torch.no_grad()
def transcribe_clips(model, greedy: Greedy, clips: list, config: DistillConfig, device, full_window: bool) -> list:
    """Greedy transcripts of each clip's first 30 s from where the runtime starts it (:func:`runtime_window`): on the
    full window (teacher) or on its own length (student)."""
    mel = LogMel(n_mels=model.config.num_mel_bins)
    vad = speech_vad() if config.vad_window else None
    texts = []
    for clip in clips:
        audio = runtime_window(_clip_audio(clip), vad)[: N_FRAMES * HOP_LENGTH]
        frames = N_FRAMES if full_window else bucket_length(len(audio), config.lengths, config.margin_frames)
        features = torch.from_numpy(mel(pad_or_trim(audio, frames * HOP_LENGTH)))[None].to(device)
        hidden = encode_frames(model.model.encoder, features)
        texts.append(greedy.tokenizer.decode(greedy(model, hidden)).strip())
    return texts


def write_curve(path: Path, history: dict) -> None:
    """Training loss (and its parts) and held-out WER against the step, as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_wer) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"wspace": 0.25})
    train = history["train"]
    steps = [r["step"] for r in train]
    # Each step's batch is a single length bucket, so single steps jump: plot the mean of the last `span` steps.
    span = max(1, min(50, len(train) // 10))
    for name in ("loss", "ce", "kd", "enc"):
        values = np.array([r[name] for r in train])
        (line,) = ax_loss.plot(steps, values, linewidth=0.5, alpha=0.25)
        mean = np.convolve(values, np.ones(span) / span, mode="valid")
        ax_loss.plot(steps[span - 1 :], mean, color=line.get_color(), linewidth=1.5, label=name)
    ax_loss.set(xlabel="step", ylabel="loss", title=f"training loss (mean of {span} steps)", yscale="log")
    ax_loss.legend()
    evals = history["eval"]
    if evals:
        es = [e["step"] for e in evals]
        if any(e.get("wer_student") is not None for e in evals):
            ax_wer.plot(es, [e["wer_student"] for e in evals], marker="o", label="student WER")
            if history.get("wer_teacher") is not None:
                ax_wer.axhline(history["wer_teacher"], color="gray", linestyle="--", label="teacher WER")
            ax_wer.set(ylabel="WER")
        else:
            ax_wer.plot(es, [e["metric"] for e in evals], marker="o", label="mean training loss")
            ax_wer.set(ylabel="loss")
        ax_wer.legend()
    ax_wer.set(xlabel="step", title="held-out evaluation")
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------------------------
# The loop


def distill_speech(
    teacher: str,
    out: Path,
    corpus: Iterable,
    steps: int,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    decoder_layers: int | None = None,
    eval_every: int = 200,
    batch_size: int = 8,
    lr: float = 3e-5,
    seed: int = 0,
    resume: bool = False,
    eval_clips: list | None = None,
    student_init: str | None = None,
    targets_dir: Path | None = None,
    device: str | None = None,
    progress: bool = True,
    **options,
) -> dict:
    """Distil ``teacher`` into a length-adaptive student; return the recipe and metrics (also in ``out/recipe.json``).

    ``corpus``: examples with ``.audio`` (float32 16 kHz samples) and a unique ``.id`` (``.voice`` and ``.source``
    are recorded when present). ``steps``: total optimizer steps (a resumed run continues up to it).
    ``eval_clips``: held-out clips with ``.path`` (or ``.audio``) and ``.text``; default
    :func:`edgemm.export.evaluation.clips.dev_clips`; an empty list evaluates the mean training loss instead of WER.
    ``student_init``: start the student from another Whisper source (same vocabulary and mel bins) instead of a copy
    of the teacher. ``targets_dir``: where teacher targets are cached (default ``out/teacher/``; runs with the same
    teacher can share it: a target made with other settings is recomputed, see :meth:`TeacherCache.settings`). ``options``: any other :class:`DistillConfig` field (temperature, weights, topk, margin_frames, patience, ...).
    Writes ``out/student/`` (transformers folder + tokenizer.json), ``out/checkpoint/``, ``out/teacher/`` (target
    cache), ``out/log.json`` and ``out/curve.png``.
    """
    out = Path(out)
    unknown = set(options) - set(DistillConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown distillation options: {sorted(unknown)}")
    config = DistillConfig(
        steps=steps,
        # The full window is always a length: longer audio is cut to it, and the exported bundle needs it last.
        lengths=tuple(sorted({int(n) for n in lengths} | {N_FRAMES})),
        decoder_layers=decoder_layers,
        eval_every=eval_every,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        **options,
    )
    config.weights = {**DEFAULT_WEIGHTS, **config.weights}
    bad = [n for n in config.lengths if n % 2 or not 0 < n <= N_FRAMES]
    if bad:
        raise ExportError(f"encoder lengths must be even numbers of mel frames in 2..{N_FRAMES}, got {bad}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT
    if checkpoint.exists() and not resume:
        raise ExportError(f"{checkpoint} exists: pass resume=True to continue it, or choose another output folder")

    _seed_all(seed)
    ck = load_whisper(teacher)
    ck.model.to(device).eval()
    for p in ck.model.parameters():
        p.requires_grad_(False)
    if student_init is None:
        student = copy.deepcopy(ck.model)
    else:  # another starting point (e.g. an earlier student); it must read the same features and tokens
        student = load_whisper(student_init).model.to(device)
        for name in ("vocab_size", "num_mel_bins"):
            if getattr(student.config, name) != getattr(ck.model.config, name):
                raise ExportError(f"student_init {student_init} has another {name} than the teacher")
    kept = shrink_decoder(student, decoder_layers) if decoder_layers else list(range(len(student.model.decoder.layers)))
    if decoder_layers and not config.train_decoder:
        raise ExportError("a student with fewer decoder layers must train its decoder (train_decoder=True)")
    for name, p in student.named_parameters():
        # The output projection is tied to the decoder's token embedding: frozen with it.
        p.requires_grad_(config.train_decoder or name.startswith("model.encoder."))
    student.train()
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=config.weight_decay)

    greedy = Greedy(ck, timestamps=config.timestamps, max_new_tokens=config.max_new_tokens)
    cache = TeacherCache(ck, Path(targets_dir or out / "teacher"), greedy, config, device)
    examples = {}
    for example in corpus:
        if str(example.id) in examples:
            raise ExportError(f"corpus has two examples with id {example.id!r}")
        examples[str(example.id)] = example
    if not examples:
        raise ExportError("the distillation corpus is empty")

    # Teacher targets: computed once per id (and reused from out/teacher/ when resuming).
    frames = {
        key: cache.get(ex).frames for key, ex in tqdm(examples.items(), desc="teacher targets", disable=not progress)
    }

    history = {"train": [], "eval": [], "wer_teacher": None, "best": None, "bad_evals": 0, "stopped_early": False}
    step = 0
    if resume and checkpoint.exists():
        step, history = load_checkpoint(checkpoint, student, optimizer)
        log.info("resumed from %s at step %d", checkpoint, step)
    if eval_clips is None:
        from edgemm.export.evaluation.clips import dev_clips

        eval_clips = dev_clips()
    if eval_clips and history["wer_teacher"] is None:
        from edgemm.export.evaluation.wer import wer

        refs = [c.text for c in eval_clips]
        history["wer_teacher"] = wer(refs, transcribe_clips(ck.model, greedy, eval_clips, config, device, True))

    per_epoch = len(batch_schedule(frames, batch_size, seed, 0))
    bar = tqdm(total=steps, initial=step, desc="distil", disable=not progress)
    started = time.perf_counter()
    first_step = step
    while step < steps and not history["stopped_early"]:
        epoch, index = divmod(step, per_epoch)
        batch = [cache.get(examples[key]) for key in batch_schedule(frames, batch_size, seed, epoch)[index]]
        losses = distill_losses(student, batch, config, device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        step += 1
        record = {"step": step, "frames": batch[0].frames, **{k: float(v.detach()) for k, v in losses.items()}}
        history["train"].append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}", kd=f"{record['kd']:.3f}")
        if step % eval_every == 0 or step == steps:
            _evaluate(student, greedy, eval_clips, config, device, step, history)
            if history["best"]["step"] == step:  # the weights exported are those of the best evaluation
                _save_student(student, ck, out / "student")
            save_checkpoint(checkpoint, student, optimizer, step, history)
            _write_log(out, config, history, teacher)
    bar.close()
    seconds = time.perf_counter() - started

    student_folder = out / "student"
    if not (student_folder / "config.json").exists():  # a resumed run that had nothing left to do
        _save_student(student, ck, student_folder)
    voices = {getattr(ex, "voice", None) for ex in examples.values()} - {None}
    sources = {getattr(ex, "source", None) for ex in examples.values()} - {None}
    last_eval = history["eval"][-1] if history["eval"] else {}
    recipe = {
        "teacher": teacher,
        "student": str(student_folder),
        "student_init": student_init or "copy of the teacher",
        "decoder_layers_kept": kept,
        "trained": "encoder and decoder" if config.train_decoder else "encoder (the decoder is the teacher's)",
        "encoder_lengths": list(config.lengths),
        "pseudo_labels": "teacher greedy, English transcribe, "
        + ("timestamps" if config.timestamps else "no timestamps"),
        "examples": len(examples),
        "data_hours": round(sum(len(ex.audio) for ex in examples.values()) / SAMPLE_RATE / 3600, 4),
        "voices": len(voices),
        "sources": sorted(map(str, sources)),
        "steps": step,
        "stopped_early": history["stopped_early"],
        "seconds_per_step": round(seconds / max(step - first_step, 1), 4) if step > first_step else None,
        "device": str(device),
        "held_out_clips": len(eval_clips),
        "wer_teacher": history["wer_teacher"],
        "wer_student": (history["best"] or {}).get("metric") if eval_clips else None,  # of the weights kept
        "wer_student_last": last_eval.get("wer_student"),
        "best": history["best"],
        "config": _jsonable(asdict(config)),
    }
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2))
    _write_log(out, config, history, teacher)
    return recipe


def _save_student(student, ck: WhisperCheckpoint, folder: Path) -> None:
    """The student as a transformers folder (+ the teacher's tokenizer), written whole before it replaces ``folder``."""
    scratch = folder.with_name(folder.name + ".new")
    shutil.rmtree(scratch, ignore_errors=True)
    student.save_pretrained(scratch)
    shutil.copy(ck.tokenizer_file, scratch / "tokenizer.json")
    shutil.rmtree(folder, ignore_errors=True)
    scratch.rename(folder)


def _evaluate(student, greedy, clips, config, device, step, history) -> None:
    """Held-out WER (or, without clips, the mean training loss since the last evaluation); early-stopping book."""
    since = [r["loss"] for r in history["train"] if r["step"] > (history["eval"][-1]["step"] if history["eval"] else 0)]
    entry = {"step": step, "train_loss": float(np.mean(since)) if since else None, "wer_student": None}
    if clips:
        from edgemm.export.evaluation.wer import wer

        student.eval()
        entry["wer_student"] = wer(
            [c.text for c in clips], transcribe_clips(student, greedy, clips, config, device, False)
        )
        student.train()
        entry["metric"] = entry["wer_student"]
    else:
        entry["metric"] = entry["train_loss"]
    history["eval"].append(entry)
    if history["best"] is None or entry["metric"] < history["best"]["metric"]:
        history["best"], history["bad_evals"] = {"step": step, "metric": entry["metric"]}, 0
    else:
        history["bad_evals"] += 1
        if config.patience and history["bad_evals"] >= config.patience:
            history["stopped_early"] = True
    log.info("step %d: %s", step, entry)


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def _write_log(out: Path, config: DistillConfig, history: dict, teacher: str) -> None:
    (out / "log.json").write_text(json.dumps({"teacher": teacher, "config": _jsonable(asdict(config)), **history}))
    write_curve(out / "curve.png", history)


# ----------------------------------------------------------------------------------------------------------------
# Export


# What the student bundle's manifest keeps of the recipe (recipe.json in the run folder has all of it).
MANIFEST_RECIPE = ("teacher", "decoder_layers_kept", "trained", "data_hours", "voices", "examples", "sources", "steps")


def teacher_bundle(teacher: str, quant: str) -> Path | None:
    """The built preset bundle of ``teacher`` at ``quant`` (e.g. whisper-tiny.en-int8 for packaged:whisper-tiny.en),
    if there is one: the student's WER is compared with it."""
    from edgemm.models import presets
    from edgemm.runtime.bundle import models_dir

    for name, preset in presets()["speech"]["presets"].items():
        folder = models_dir() / name
        if (preset["source"], preset["quant"]) == (teacher, quant) and (folder / "manifest.json").is_file():
            return folder
    return None


def export_student(
    student_folder: Path,
    out: Path,
    recipe: dict | None = None,
    quant: str = "int8",
    teacher: Path | None = None,
    **kwargs,
) -> dict:
    """Build a speech bundle from the distilled student (a transformers folder) with the export path: its encoder
    lengths, and the recipe (teacher, data, steps, held-out WER) in the manifest's ``distillation``; returns the
    manifest. The student bundle's own held-out WER (fp32 and int8, as the runtime decodes) is in its ``fidelity``;
    ``teacher``: a teacher bundle whose WER is measured the same way, beside it (``wer_teacher_bundle``)."""
    from edgemm.export.speech import export_speech, measure_wer
    from edgemm.runtime.bundle import open_bundle

    recipe = recipe or {}
    summary = {k: recipe[k] for k in MANIFEST_RECIPE if k in recipe}
    # The recipe's WERs are PyTorch greedy decoding without fallback: the teacher on 30 s windows, the student
    # (the weights kept) on its own lengths.
    for key in ("wer_teacher", "wer_student"):
        if key in recipe:
            summary[f"{key}_pytorch"] = recipe[key]
    if recipe.get("best"):  # "steps" counts every step run; the weights kept may be an earlier evaluation's
        summary["kept_step"] = recipe["best"]["step"]
    if teacher is not None:
        measured = measure_wer({"teacher": open_bundle(teacher, "speech")})
        if "wer_teacher" in measured:
            summary["wer_teacher_bundle"] = {"bundle": Path(teacher).name, "wer": measured["wer_teacher"]}
    lengths = recipe.get("encoder_lengths")
    return export_speech(
        str(student_folder),
        quant,
        Path(out),
        encoder_lengths=list(lengths) if lengths else None,
        distillation=summary or None,
        **kwargs,
    )
