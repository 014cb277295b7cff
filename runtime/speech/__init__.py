"""Speech to text: audio -> log-mel -> Whisper (ONNX) -> tokens -> text, with Silero VAD.

The entry point is :class:`Transcriber`; the modules, in the order a clip goes through them: ``audio`` (any file or
array to 16 kHz mono; ``quiet`` keeps a damaged MP3's decoder messages short), ``vad`` (speech probabilities and regions), ``features`` (log-mel), ``model`` (the ONNX encoder
and decoder), ``decoding`` (greedy / beam search and Whisper's timestamp rules), ``transcribe`` (30 s windows,
segments, temperature fallback).
"""

from edgemm.runtime.speech.decoding import DecodingOptions
from edgemm.runtime.speech.stream import Partial, TranscriptionStream
from edgemm.runtime.speech.transcribe import Segment, TranscribeOptions, Transcriber, Transcription

__all__ = [
    "DecodingOptions",
    "Partial",
    "Segment",
    "TranscribeOptions",
    "Transcriber",
    "Transcription",
    "TranscriptionStream",
]
