"""``edgemm bench stream``: live transcription against batch transcription of the same recordings.

Each clip is played through the assistant's endpointer in 32 ms blocks; every utterance it cuts is transcribed live
(``Transcriber.stream()``, a partial every ``partial_every_s`` of audio) and its final transcript is compared with
the batch transcription of the whole clip. Time is the microphone's, with each decode's measured seconds laid on
it: a partial starts when it is due and the decoder is free (else it is skipped, as the assistant skips it), so the
figures are those of a live microphone on this machine. Method: docs/BENCHMARKS.md ("Streaming transcription").
"""

from __future__ import annotations

import json
import statistics
import time
from typing import TYPE_CHECKING

import numpy as np

from edgemm.bench.endpointing import voiced_start
from edgemm.export.evaluation.wer import wer

if TYPE_CHECKING:
    from edgemm.bench.commands import StreamOptions


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def stream_clip(transcriber, samples: np.ndarray, options) -> dict:
    """One clip through the endpointer and live transcription: its final text, the seconds from each utterance's
    first voiced sample to its first partial with words, and from each cut to its final transcript."""
    from edgemm.runtime.speech.endpoint import Endpointer
    from edgemm.runtime.speech.vad import CHUNK, VADStream

    endpointer = Endpointer(VADStream(transcriber.vad), options)
    tail = 2 * 16000  # trailing silence ends the last utterance
    padded = np.pad(samples, (0, tail + (-(samples.size + tail)) % CHUNK))
    texts, first_partials, finals, decodes = [], [], [], []
    stream, fed, busy, onset, first = None, 0, 0.0, None, None
    for offset in range(0, padded.size, CHUNK):
        utterance = endpointer.feed(padded[offset : offset + CHUNK])
        now = endpointer.t
        if endpointer.started:
            stream, fed, first = transcriber.stream(every_s=options.partial_every_s), 0, None
            onset = endpointer.start + voiced_start(endpointer.audio()) / 16000
        if stream is not None and endpointer.recording:
            for block in endpointer.blocks[fed:]:
                stream.feed(block, partial=False)
            fed = len(endpointer.blocks)
            if stream.due and busy <= now:  # the decoder is free: a partial now
                partial, seconds = _timed(stream.partial)
                busy = now + seconds
                decodes.append(seconds)
                if first is None and partial.text and now >= onset:
                    first = busy - onset
                    first_partials.append(first)
        if utterance is not None and stream is not None:
            stream.keep(utterance.samples.size)  # a long utterance is cut in a pause before the audio fed
            rest = utterance.samples[stream.size :]
            if rest.size:
                stream.feed(rest, partial=False)
            final, seconds = _timed(stream.finish, silent_tail=utterance.silent_tail)
            finals.append(max(busy, now) + seconds - now)  # from the cut, waiting for a partial still running
            busy = max(busy, now) + seconds
            texts.append(final.text.strip())
            stream = None
    return {
        "text": " ".join(t for t in texts if t),
        "first_partial": first_partials,
        "final": finals,
        "decodes": decodes,
    }


def run_bench_stream(args: StreamOptions) -> int:
    from edgemm.export.evaluation.clips import dev_clips, extra_clips
    from edgemm.runtime.speech import Transcriber
    from edgemm.runtime.speech.audio import load_audio
    from edgemm.runtime.speech.endpoint import EndpointOptions

    transcriber = Transcriber.load(args.model, threads=args.threads)
    options = EndpointOptions()
    sets = {"development": dev_clips()} | ({"extra": extra_clips()} if args.extra_clips else {})
    report = {"bundle": transcriber.bundle.path.name, "sets": {}}
    for name, clips in sets.items():
        batch, live, first, finals, decodes = [], [], [], [], []
        for clip in clips:
            samples = load_audio(clip.path)
            batch.append(transcriber.transcribe(samples).text)
            result = stream_clip(transcriber, samples, options)
            live.append(result["text"])
            first += result["first_partial"]
            finals += result["final"]
            decodes += result["decodes"]
        texts = [c.text for c in clips]
        report["sets"][name] = {
            "clips": len(clips),
            "wer_batch": round(100 * wer(texts, batch), 2),
            "wer_stream": round(100 * wer(texts, live), 2),
            "first_partial_median_s": round(statistics.median(first), 3) if first else None,
            "first_partial_p90_s": round(float(np.percentile(first, 90)), 3) if first else None,
            "final_after_cut_median_s": round(statistics.median(finals), 3) if finals else None,
            "decode_median_s": round(statistics.median(decodes), 3) if decodes else None,
        }
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"edgemm bench stream: {report['bundle']}, {args.threads} threads, a partial every {options.partial_every_s} s"
    )
    for name, r in report["sets"].items():
        print(
            f"  {name} ({r['clips']} clips): WER batch {r['wer_batch']:.2f} %, streamed {r['wer_stream']:.2f} %; "
            f"first partial {r['first_partial_median_s']} s after speech starts (90th percentile "
            f"{r['first_partial_p90_s']}); final transcript {r['final_after_cut_median_s']} s after the cut; "
            f"a decode {r['decode_median_s']} s"
        )
    return 0
