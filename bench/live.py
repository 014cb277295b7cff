"""``edgemm bench live``: the server's memory over a long live transcription (``/v1/audio/live``).

One client streams ``--minutes`` of microphone audio (16-bit PCM at 48 kHz, 0.1 s messages, ``--speed`` times
faster than real time) twice: speech (the development clips in turn, with 0.7 s pauses), then the same length of
noise with no pause at all (the server drops each 30 s utterance with an error). The server's resident memory is
read every 10 s of audio; bounded means it ends where it was after the first minute. Method and results:
docs/BENCHMARKS.md ("A long live stream").
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edgemm.bench.commands import LiveOptions

RATE = 48000
MESSAGE = RATE // 10  # samples per message: 0.1 s


def speech(minutes: float) -> list[np.ndarray]:
    """Utterances for ``minutes``: the development clips in turn, each with a 0.7 s pause after it, at 48 kHz."""
    import soxr

    from edgemm.export.evaluation.clips import dev_clips
    from edgemm.runtime.speech.audio import load_audio

    pause = np.zeros(int(0.7 * RATE), np.float32)
    clips = [np.concatenate([soxr.resample(load_audio(clip.path), 16000, RATE), pause]) for clip in dev_clips()]
    pieces, total = [], 0
    while total < minutes * 60 * RATE:
        pieces.append(clips[len(pieces) % len(clips)])
        total += pieces[-1].size
    return pieces


def noise(minutes: float) -> list[np.ndarray]:
    """One ``minutes``-long stretch of noise: no pause, no end."""
    return [np.random.default_rng(0).standard_normal(int(minutes * 60 * RATE)).astype(np.float32) * 0.05]


def stream(server, pieces: list[np.ndarray], speed: float) -> dict:
    """Send each of ``pieces`` to /v1/audio/live, then ``{"type": "end"}`` as a client's endpointer would (the last
    piece too), reading replies beside; the server's RSS every 10 s of audio."""
    from websockets.sync.client import connect

    pcm = np.concatenate([(np.clip(piece, -1, 1) * 32767).astype("<i2") for piece in pieces])
    ends = set(np.cumsum([piece.size for piece in pieces]) // MESSAGE)  # the message after which each piece ends
    counts = {"partial": 0, "final": 0, "error": 0}
    rss, errors, started = [], [], time.monotonic()
    url = server.url.replace("http", "ws", 1) + f"/v1/audio/live?rate={RATE}"
    with connect(url, open_timeout=30, max_size=None) as socket:

        def read() -> None:
            try:
                while True:
                    reply = json.loads(socket.recv())
                    counts[reply["type"]] += 1
                    if reply["type"] == "error":
                        errors.append(reply["message"])
            except Exception:  # noqa: BLE001 (the connection closed: reading ends)
                return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        for i, start in enumerate(range(0, pcm.size, MESSAGE)):
            time.sleep(max(0.0, started + start / RATE / speed - time.monotonic()))
            socket.send(pcm[start : start + MESSAGE].tobytes())
            if i + 1 in ends:
                socket.send(json.dumps({"type": "end"}))
            if i % 100 == 0:  # every 10 s of audio
                rss.append(round(server.rss_mb(), 1))
        time.sleep(3)
    rss.append(round(server.rss_mb(), 1))
    return {
        "seconds": round(time.monotonic() - started, 1),
        "replies": counts,
        "errors": sorted(set(errors)),
        "rss_after_1_min_mb": rss[min(6, len(rss) - 1)],
        "rss_peak_mb": max(rss),
        "rss_end_mb": rss[-1],
        "rss_mb": rss,
    }


def run_bench_live(args: LiveOptions) -> int:
    from edgemm.bench.serve import ServerProcess

    minutes = args.minutes
    with ServerProcess("--threads", str(args.threads), "--no-vision", "--no-tts") as server:
        report = {
            "minutes": minutes,
            "speed": args.speed,
            "rss_loaded_mb": round(server.rss_mb(), 1),
            "speech": stream(server, speech(minutes), args.speed),
            "noise_without_a_pause": stream(server, noise(minutes), args.speed),
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"edgemm bench live: {minutes} min per stream at {args.speed}x, server loaded {report['rss_loaded_mb']} MB")
    for name in ("speech", "noise_without_a_pause"):
        r = report[name]
        print(
            f"  {name:22s} RSS after 1 min {r['rss_after_1_min_mb']} MB, peak {r['rss_peak_mb']}, end {r['rss_end_mb']}"
            f"  replies {r['replies']} {r['errors']}"
        )
    return 0
