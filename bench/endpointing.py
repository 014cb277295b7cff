"""``edgemm bench endpoint``: does the assistant end a spoken question where it ends, and only there?

The test set: questions said in two parts with a pause of 300, 500 or 700 ms between them ("What is the capital of
... France?"), by the project's Piper voice and by espeak-ng voices. Each is played to the assistant on a file-backed
microphone (the listening path of ``edgemm listen``: endpointer, live transcription, the LLM's completeness
judgement); answers are cut to one token, only the endpointing is scored. Reported: questions cut in two at their
pause, and the silence from each question's true end (its last voiced 10 ms) to the cut: median and 90th
percentile, beside the plain endpointer (a fixed ``end_silence_ms``, no judging). The completeness threshold is
chosen on other questions (the development set): the lowest that judges at most 5% of their first parts complete.
Method: docs/BENCHMARKS.md
("Endpointing").
"""

from __future__ import annotations

import json
import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgemm.bench.assistant import voiced_end
from edgemm.runtime.errors import EdgemmError

if TYPE_CHECKING:
    from edgemm.bench.commands import ModelOptions

# (before the pause, after it): complete only together.
QUESTIONS = [
    ("What is the capital of", "France?"),
    ("How many legs does", "a spider have?"),
    ("Set a timer for", "ten minutes."),
    ("Who wrote the play", "Romeo and Juliet?"),
    ("What colour is", "the sky on a clear day?"),
    ("Tell me a fact about", "the moon."),
    ("Which planet is", "closest to the sun?"),
    ("What is the boiling point of", "water?"),
    ("Can you recommend", "a good book?"),
    ("How far away is", "the moon from the earth?"),
    ("What time does the sun set", "in winter?"),
    ("Translate good morning into", "French."),
]
# Other questions, for choosing the completeness threshold (the test set above only reports it).
DEV_QUESTIONS = [
    ("What is the tallest", "mountain in the world?"),
    ("How do you say thank you", "in Spanish?"),
    ("Who painted", "the Mona Lisa?"),
    ("What is the largest", "ocean on earth?"),
    ("How many days are there in", "a leap year?"),
    ("Give me a recipe for", "pancakes."),
    ("What language do people speak in", "Brazil?"),
    ("Why is the", "sky blue?"),
    ("What does a caterpillar", "turn into?"),
    ("Where do", "penguins live?"),
    ("Explain how a rainbow", "is formed."),
    ("What is the opposite of", "hot?"),
]
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 13))
# Share of first parts judged complete that the threshold may allow: a stricter one waits longer after most
# questions (misheard first parts read complete: "Give me a recipe for" heard as "Give me a recipe.").
TOLERATED = 0.05
PAUSES_MS = (300, 500, 700)
ESPEAK_VOICES = ("en-us+m3", "en-gb+f2", "en-us+f3")
LEAD_S, TAIL_S = 0.5, 2.0  # silence before each question and after it


@dataclass
class Case:
    text: str
    voice: str
    pause_ms: int
    audio: np.ndarray  # 16 kHz
    second_part: float  # seconds where the part after the pause starts
    end: float  # seconds: the question's true end


def _speakers(seed: int) -> dict:
    """Voice name -> speak(text) -> 16 kHz samples: Piper at two rates and the espeak-ng voices installed."""
    from edgemm.export.distill.data import SAMPLE_RATE, Espeak, Piper, resample

    rng = np.random.default_rng(seed)
    speakers = {}
    try:
        piper = Piper()
        for rate in (0.95, 1.1):
            config = piper.config(length_scale=rate, noise_scale=0.0, noise_w_scale=0.0)

            def say(text, config=config):
                piper.synth.config = config
                speech = piper.synth.synthesize(text)
                return resample(speech.samples, speech.sample_rate, SAMPLE_RATE)

            speakers[f"piper x{rate}"] = say
    except Exception as e:  # no tts extra: espeak-ng voices only
        speakers.clear()
        print(f"(no Piper voice: {str(e).splitlines()[0]})")
    try:
        for voice in ESPEAK_VOICES:
            espeak = Espeak()  # one voice each, at one speed and pitch for both parts of a question
            language, variant = voice.split("+")
            espeak.LANGUAGES, espeak.VARIANTS = [language], [variant]
            seed = int(rng.integers(1 << 31))

            def say(text, espeak=espeak, seed=seed):
                return espeak.speak(text, np.random.default_rng(seed))[0]

            speakers[f"espeak {voice}"] = say
    except FileNotFoundError:
        print("(espeak-ng not installed: Piper only)")
    if not speakers:
        raise EdgemmError("no voice to speak the test set: pip install 'edgemm[tts]', or apt-get install espeak-ng")
    return speakers


def test_set(seed: int = 0, questions=QUESTIONS, pauses=PAUSES_MS) -> list[Case]:
    cases = []
    for voice, say in _speakers(seed).items():
        for before, after in questions:
            first, second = say(before), say(after)
            # Each part without its own trailing/leading silence: the pause is exactly the one inserted.
            first = first[: round(voiced_end(first, 16000) * 16000)]
            second = second[voiced_start(second) :]
            for pause in pauses:
                lead, gap, tail = (np.zeros(round(s * 16000), np.float32) for s in (LEAD_S, pause / 1000, TAIL_S))
                audio = np.concatenate([lead, first, gap, second, tail]).astype(np.float32)
                start2 = (lead.size + first.size + gap.size) / 16000
                end = start2 + voiced_end(second, 16000)
                cases.append(Case(f"{before} {after}", voice, pause, audio, start2, end))
    return cases


def voiced_start(samples: np.ndarray) -> int:
    """The first sample of the first voiced 10 ms frame (same measure as voiced_end, from the other side)."""
    return max(0, samples.size - round(voiced_end(samples[::-1].copy(), 16000) * 16000))


def judgements(assistant, cases: list[Case]) -> list[tuple[float, float]]:
    """For each case, the assistant's completeness judgement after ``judge_silence_ms`` of the pause (of the first
    part: should be low) and of the end (of the whole question: should be high); None counts as 0."""
    silence = assistant.endpoint.judge_silence_ms / 1000
    scores = []
    for case in cases:
        pause = case.pause_ms / 1000
        pair = []
        for end in (case.second_part - pause + silence, case.end + silence):
            text = assistant.transcriber.transcribe(case.audio[: round(end * 16000)], 16000).text
            pair.append(assistant.judge(text) or 0.0)
        scores.append(tuple(pair))
    return scores


def curve(scores: list[tuple[float, float]]) -> list[dict]:
    """Per threshold: first parts judged complete (the question would be cut in two) and whole questions judged
    complete (ended after the short silence)."""
    return [
        {
            "threshold": t,
            "first_part_complete": sum(1 for a, _ in scores if a >= t),
            "whole_complete": sum(1 for _, b in scores if b >= t),
            "cases": len(scores),
        }
        for t in THRESHOLDS
    ]


def choose(points: list[dict], tolerated: float = TOLERATED) -> float:
    """The lowest threshold that judges at most ``tolerated`` of the first parts complete."""
    safe = [p["threshold"] for p in points if p["first_part_complete"] <= tolerated * p["cases"]]
    return min(safe) if safe else THRESHOLDS[-1]


def listen(assistant, case: Case) -> list[tuple[float, float]]:
    """The utterances (microphone start, cut) the assistant heard in ``case``."""
    import soundfile as sf

    from edgemm.device.audio import FileMicrophone
    from edgemm.runtime.assistant import TurnEnd

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mic.wav"
        sf.write(path, case.audio, 16000)
        with FileMicrophone(path, tail_silence_s=0.0) as mic:
            turns = [e.turn for e in assistant.run(mic) if isinstance(e, TurnEnd)]
    assistant.chat.turns.clear()  # each case as the first question (the system prompt stays in the cache)
    return [t.heard for t in turns if t.heard and not t.superseded]  # a question continued after a cut counts once


def score(cases: list[Case], heard: list[list[tuple[float, float]]]) -> dict:
    split = sum(1 for c, h in zip(cases, heard, strict=True) if any(cut < c.second_part for _, cut in h))
    missed = sum(1 for h in heard if not h)
    waits = [h[-1][1] - c.end for c, h in zip(cases, heard, strict=True) if h and h[-1][1] >= c.end]
    return {
        "cases": len(cases),
        "cut_in_two": split,
        "not_heard": missed,
        "median_silence_s": round(statistics.median(waits), 3) if waits else None,
        "p90_silence_s": round(float(np.percentile(waits, 90)), 3) if waits else None,
    }


def run_bench_endpoint(args: ModelOptions) -> int:
    from edgemm.runtime.assistant import Assistant
    from edgemm.runtime.llm import GenerationOptions

    base = Assistant.load(model=args.model, threads=args.threads, vision=False, speak=False)
    dev = test_set(seed=1, questions=DEV_QUESTIONS, pauses=(500,))
    print(f"edgemm bench endpoint: completeness of {len(dev)} development questions, first part and whole", flush=True)
    points = curve(judgements(base, dev))
    results = {"development": {"curve": points, "chosen": choose(points), "default": base.endpoint.complete}}
    cases = test_set()
    print(f"  test set: {len(cases)} spoken questions with a pause inside (300-700 ms)", flush=True)
    for name, options in (
        ("judged", base.endpoint),
        ("plain", replace(base.endpoint, complete=None)),
    ):
        assistant = Assistant(base.transcriber, base.chat.lm, options=GenerationOptions(max_new_tokens=1))
        assistant.endpoint = options
        heard = [listen(assistant, case) for case in cases]
        results[name] = score(cases, heard)
        results[name]["by_pause"] = {
            str(p): score(
                [c for c in cases if c.pause_ms == p], [h for c, h in zip(cases, heard, strict=True) if c.pause_ms == p]
            )
            for p in PAUSES_MS
        }
        results[name]["cut_in_two_by_voice"] = {
            voice: sum(
                1
                for c, h in zip(cases, heard, strict=True)
                if c.voice == voice and any(cut < c.second_part for _, cut in h)
            )
            for voice in dict.fromkeys(c.voice for c in cases)
        }
    if args.json:
        print(json.dumps(results))
        return 0
    development = results.pop("development")
    print("  development set: threshold -> first parts judged complete, whole questions judged complete")
    for p in development["curve"]:
        print(f"    {p['threshold']:.2f}: {p['first_part_complete']}/{p['cases']}, {p['whole_complete']}/{p['cases']}")
    print(f"  chosen: {development['chosen']} (EndpointOptions.complete is {development['default']})")
    for name, r in results.items():
        label = "judged by the LLM" if name == "judged" else f"plain ({base.endpoint.end_silence_ms} ms of silence)"
        print(
            f"  {label}: cut in two {r['cut_in_two']}/{r['cases']}, not heard {r['not_heard']}, silence from the "
            f"end of the question to the cut: median {r['median_silence_s']} s, 90th percentile {r['p90_silence_s']} s"
        )
        print("    cut in two by voice: " + ", ".join(f"{v} {n}" for v, n in r["cut_in_two_by_voice"].items()))
        for pause, p in r["by_pause"].items():
            print(
                f"    pause {pause} ms: cut in two {p['cut_in_two']}/{p['cases']}, median silence {p['median_silence_s']}"
            )
    return 0
