"""Subtitles from transcription segments: SubRip (``.srt``) and WebVTT (``.vtt``)."""

from __future__ import annotations


def _timestamp(seconds: float, decimal: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _cues(segments, decimal: str):
    for segment in segments:
        text = segment.text.strip().replace("-->", "->")  # the arrow would end a cue's timing line
        if text:
            yield f"{_timestamp(segment.start, decimal)} --> {_timestamp(segment.end, decimal)}\n{text}\n"


def srt(segments) -> str:
    """Numbered cues, times as ``00:00:01,500``."""
    return "\n".join(f"{n}\n{cue}" for n, cue in enumerate(_cues(segments, ","), start=1))


def vtt(segments) -> str:
    """A ``WEBVTT`` header, then cues with times as ``00:00:01.500``."""
    return "\n".join(["WEBVTT\n", *_cues(segments, ".")])
