"""`edgemm bench asr`'s report: student rows beside the teacher bundle, and which students it measures."""

from __future__ import annotations

import argparse

from edgemm.bench import asr


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
    assert asr._students(argparse.Namespace(student=None)) == {}
    built = tmp_path / asr.DEFAULT_STUDENT
    built.mkdir()
    (built / "manifest.json").write_text("{}")
    assert asr._students(argparse.Namespace(student=None)) == {f"student {asr.DEFAULT_STUDENT}": str(built)}
    other = tmp_path / "mine"
    assert asr._students(argparse.Namespace(student=[other])) == {"student mine": str(other)}
