"""Speech to text: audio -> 30 s windows -> log-mel -> Whisper (ONNX) -> segments with timestamps.

Long audio is decoded window by window; each window advances to the last timestamp the model emitted,
so segments keep true times. Silero VAD skips stretches without speech (silence or noise gives empty
text), and Whisper's own no-speech probability drops windows the VAD let through.

Whisper pads every window to 30 s: it was trained on nothing else. A length-adaptive bundle (a student distilled
for shorter inputs) lists ``model.encoder_lengths``; a window is then padded only to the smallest of them that holds
its audio plus a short margin, so a 4 s utterance costs a 5 s encoder run. The timestamps it may emit end at that
length (see decoding.py); seeking still counts the window's real audio.

Every stage checks for cancellation (edgemm.runtime.cancel) between bounded steps: audio blocks, VAD chunks,
windows, temperature fallbacks and decoded tokens, so an abandoned job over two hours of audio stops at once.
"""

from __future__ import annotations

import logging
import math
import numbers
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from edgemm.runtime import cancel
from edgemm.runtime.bundle import Bundle, open_bundle
from edgemm.runtime.errors import OptionsError
from edgemm.runtime.limits import check_float, check_memory_for, check_text
from edgemm.runtime.speech.audio import load_audio
from edgemm.runtime.speech.decoding import DecodingOptions, DecodingResult, WindowDecoder, verify_options
from edgemm.runtime.speech.features import LogMel, pad_or_trim
from edgemm.runtime.speech.model import WhisperONNX
from edgemm.runtime.speech.tokenizer import SpecialTokens, WhisperTokenizer
from edgemm.runtime.speech.vad import SileroVAD

log = logging.getLogger(__name__)

TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# A window whose loudest sample is below -60 dBFS holds no speech; Whisper would still "hear" words there.
SILENCE_PEAK = 10 ** (-60 / 20)
# Length-adaptive bundles: frames of padding kept after a window's audio (0.1 s), so that the model hears its end.
LENGTH_MARGIN = 10
# An initial prompt: the decoder keeps only its last 223 tokens, so more text than this only costs tokenizing.
MAX_PROMPT_CHARS = 10_000


@dataclass(frozen=True)
class TranscribeOptions:
    decoding: DecodingOptions = DecodingOptions()
    vad: bool = True  # skip audio without speech (Silero VAD)
    temperatures: tuple[float, ...] = TEMPERATURES  # retried in order when a window decodes badly
    compression_ratio_threshold: float = 2.4  # above: repetitive text, retry hotter
    logprob_threshold: float = -1.0  # below: unsure text, retry hotter
    no_speech_threshold: float = 0.6  # above (and unsure): the window is silence, no text
    condition_on_previous_text: bool = True  # feed the previous window's text as a prompt
    initial_prompt: str | None = None  # text said before the audio: names, spellings, style (last 223 tokens)

    def __post_init__(self):
        if not isinstance(self.decoding, DecodingOptions):
            raise OptionsError(f"decoding must be DecodingOptions, not {type(self.decoding).__name__}")
        if self.initial_prompt is not None:
            object.__setattr__(self, "initial_prompt", check_text(self.initial_prompt, "the prompt", MAX_PROMPT_CHARS))
        temperatures = (self.temperatures,) if isinstance(self.temperatures, numbers.Real) else self.temperatures
        if not isinstance(temperatures, (list, tuple)) or not temperatures:
            raise OptionsError("temperatures must be a non-empty list of numbers >= 0")
        checked = {
            "temperatures": tuple(check_float(t, "each temperature", 0.0, 100.0) for t in temperatures),
            "compression_ratio_threshold": check_float(
                self.compression_ratio_threshold, "compression_ratio_threshold", 0.0, low_open=True
            ),
            "logprob_threshold": check_float(self.logprob_threshold, "logprob_threshold", -math.inf, 0.0),
            "no_speech_threshold": check_float(self.no_speech_threshold, "no_speech_threshold", 0.0, 1.0),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


@dataclass
class Segment:
    start: float  # seconds
    end: float
    text: str
    tokens: list[int] = field(repr=False)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    # Of its window's decoded text, as Whisper gives them: how well that text compresses (zlib; a repetitive
    # hallucination compresses well), and the temperature the fallback decoded it at.
    compression_ratio: float = 0.0
    temperature: float = 0.0


@dataclass
class Transcription:
    text: str
    segments: list[Segment]
    language: str | None
    duration: float  # seconds of input audio

    def to_dict(self) -> dict:
        segments = [{k: v for k, v in asdict(s).items() if k != "tokens"} for s in self.segments]
        return {"text": self.text, "language": self.language, "duration": self.duration, "segments": segments}


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def encoder_length(frames: int, lengths, margin: int = LENGTH_MARGIN) -> int:
    """The smallest of ``lengths`` (mel frames, ascending, the last the full window) that holds ``frames`` of audio
    plus ``margin``; the full window when none does. The runtime and the distillation trainer both pick with it."""
    return next((n for n in lengths if n >= frames + margin), lengths[-1])


class Transcriber:
    """``Transcriber.load(bundle).transcribe(audio) -> Transcription``.

    Safe to share between threads: ``transcribe`` keeps its state (VAD stream, windows, KV caches) in the call and
    only runs the shared onnxruntime sessions, which allow concurrent runs.
    """

    def __init__(self, bundle: Bundle, threads: int | None = None):
        m = bundle.manifest
        check_memory_for(*bundle.graph_files())
        self.bundle = bundle
        self.model = WhisperONNX(bundle, threads)
        self.tokenizer = WhisperTokenizer(bundle.tokenizer(m["tokenizer"]), SpecialTokens.from_manifest(m["tokens"]))
        self.decoder = WindowDecoder(self.model, self.tokenizer, m["tokens"]["suppress"], m["tokens"]["suppress_begin"])
        f = m["features"]
        self.log_mel = LogMel(
            n_mels=f["n_mels"], sample_rate=f["sample_rate"], n_fft=f["n_fft"], hop_length=f["hop_length"]
        )
        self.sample_rate, self.hop = f["sample_rate"], f["hop_length"]
        self.window_samples = f["chunk_seconds"] * self.sample_rate
        self.window_frames = self.window_samples // self.hop
        # Frames per timestamp step: the encoder halves the mel frames (3000 -> 1500 positions).
        self.frames_per_position = self.window_frames // m["model"]["max_source_positions"]
        # The encoder lengths (mel frames) this bundle runs at, shortest first; Whisper itself: the 30 s window.
        self.encoder_lengths = m["model"].get("encoder_lengths") or [self.window_frames]
        self.vad = SileroVAD(bundle.file(m["vad"]["file"])) if m.get("vad") else None

    @classmethod
    def load(cls, bundle: str | Path | None = None, threads: int | None = None, verify: bool = True) -> Transcriber:
        return cls(open_bundle(bundle, "speech", verify=verify), threads)

    def transcribe(
        self, audio, sample_rate: int | None = None, options: TranscribeOptions | None = None, on_segments=None
    ):
        """``audio``: a file, encoded bytes, a pipe, or samples at ``sample_rate``. ``on_segments(segments)`` is
        called with each window's new segments as soon as it is decoded (a streamed transcript)."""
        options = TranscribeOptions() if options is None else options
        if not isinstance(options, TranscribeOptions):
            raise OptionsError(f"options must be TranscribeOptions, not {type(options).__name__}")
        verify_options(options.decoding, self.tokenizer)
        if options.vad and self.vad is None:
            raise OptionsError("this bundle has no VAD model; transcribe with vad=False")
        samples = load_audio(audio, sample_rate, self.sample_rate)
        duration = len(samples) / self.sample_rate
        regions = self.vad.speech_regions(samples) if options.vad else [(0, len(samples))]
        log.debug("speech regions (s): %s", [(a / self.sample_rate, b / self.sample_rate) for a, b in regions])
        if not regions:
            return Transcription("", [], options.decoding.language, duration)
        segments, language = self._windows(samples, regions, options, on_segments)
        text = "".join(s.text for s in segments).strip()
        return Transcription(text, segments, language, duration)

    def stream(self, options: TranscribeOptions | None = None, **kwargs):
        """A live transcription of one utterance: feed it audio as it arrives for partials, then ``finish()``
        (:class:`edgemm.runtime.speech.stream.TranscriptionStream`; ``kwargs``: its ``every_s`` and ``max_s``)."""
        from edgemm.runtime.speech.stream import TranscriptionStream

        return TranscriptionStream(self, options, **kwargs)

    def encoder_frames(self, size: int) -> int:
        """The encoder length for a window holding ``size`` frames of audio (the full window for plain Whisper)."""
        return encoder_length(size, self.encoder_lengths)

    def _encode(self, samples: np.ndarray, seek: int, frames: int | None = None):
        """Cross K/V of the window at ``seek`` padded to ``frames`` (default: the full 30 s window)."""
        start, length = seek * self.hop, (frames or self.window_frames) * self.hop
        return self.model.encode(self.log_mel(pad_or_trim(samples[start : start + length], length)))

    def _windows(self, samples, regions, options: TranscribeOptions, on_segments=None):
        content_frames = len(samples) // self.hop
        spans = [(a // self.hop, -(-b // self.hop)) for a, b in regions]
        decoding, language = options.decoding, options.decoding.language
        segments: list[Segment] = []
        # Text tokens so far, for conditioning; an initial prompt goes first.
        tokens = self.tokenizer.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else []
        prompt_start, seek = 0, 0
        while True:
            cancel.check()
            seek = next((max(seek, a) for a, b in spans if b > seek), None)  # jump over non-speech
            if seek is None or seek >= content_frames:
                break
            size = min(self.window_frames, content_frames - seek)
            offset = seek / (self.sample_rate / self.hop)
            if np.abs(samples[seek * self.hop : (seek + size) * self.hop]).max() < SILENCE_PEAK:
                log.debug("%.1f s: silent window", offset)
                seek += size
                continue
            cross = self._encode(samples, seek, self.encoder_frames(size))
            if language is None and self.tokenizer.special.languages:
                language, _ = self.decoder.detect_language(cross)
                decoding = replace(decoding, language=language)
                log.debug("detected language: %s", language)
            prompt = tokens[prompt_start:] if options.condition_on_previous_text else []
            result = self._decode_with_fallback(cross, prompt, decoding, options)
            if result.no_speech_prob > options.no_speech_threshold and result.avg_logprob < options.logprob_threshold:
                log.debug("%.1f s: no speech (p=%.2f)", offset, result.no_speech_prob)
                seek += size
                continue
            new, advance = self._split(result, offset, size, len(samples) / self.sample_rate)
            new = [s for s in new if s.text.strip()]
            segments += new
            if new and on_segments is not None:
                on_segments(new)
            tokens += [t for s in new for t in s.tokens if t < self.tokenizer.special.eot]
            if not options.condition_on_previous_text or result.temperature > 0.5:
                prompt_start = len(tokens)
            seek += max(advance, 1)
        return segments, language

    def _decode_with_fallback(self, cross, prompt, decoding, options) -> DecodingResult:
        rng = np.random.default_rng(decoding.seed)
        result = None
        for temperature in options.temperatures:
            cancel.check()
            result = self.decoder.decode(cross, prompt, replace(decoding, temperature=temperature), rng)
            text = self.tokenizer.decode(result.tokens)
            too_repetitive = compression_ratio(text) > options.compression_ratio_threshold
            too_unsure = result.avg_logprob < options.logprob_threshold
            if result.no_speech_prob > options.no_speech_threshold or not (too_repetitive or too_unsure):
                break
            log.debug(
                "retrying window at a higher temperature (ratio %.2f, logprob %.2f)",
                compression_ratio(text),
                result.avg_logprob,
            )
        return result

    def _split(self, result: DecodingResult, offset: float, size: int, end_of_audio: float):
        """Cut a window's tokens into segments at timestamp pairs; return them and the frames consumed."""
        ts = self.tokenizer.special.timestamp_begin
        step = self.frames_per_position / (self.sample_rate / self.hop)  # seconds per timestamp token
        toks = result.tokens
        is_ts = [t >= ts for t in toks]
        cuts = [i for i in range(1, len(toks)) if is_ts[i] and is_ts[i - 1]]
        single_ending = len(toks) >= 2 and not is_ts[-2] and is_ts[-1]
        ratio = compression_ratio(self.tokenizer.decode(toks).strip())

        def segment(start, end, piece):
            return Segment(
                round(offset + start, 3),
                round(min(offset + end, end_of_audio), 3),
                self.tokenizer.decode(piece),
                piece,
                result.avg_logprob,
                result.no_speech_prob,
                ratio,
                result.temperature,
            )

        if cuts:
            if single_ending:
                cuts.append(len(toks))
            out, last = [], 0
            for cut in cuts:
                piece = toks[last:cut]
                out.append(segment((piece[0] - ts) * step, (piece[-1] - ts) * step, piece))
                last = cut
            advance = size if single_ending else (toks[last - 1] - ts) * self.frames_per_position
            return out, advance
        stamps = [t for t in toks if t >= ts]
        duration = size / (self.sample_rate / self.hop)
        if stamps and stamps[-1] != ts:
            duration = (stamps[-1] - ts) * step
        return [segment(0.0, duration, toks)], size
