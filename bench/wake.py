"""``edgemm bench wake``: each wake word's detection rate and false accepts per hour, over a range of thresholds.

Positives: each word's phrase, alone and before a question, said by synthetic voices (Piper at two rates, six
espeak-ng voices) in pink noise at several SNRs. Negatives: every real recording the project installs (bench/clips.py
dev and extra clips, the distillation corpus's other recordings), none of which says a wake word, and as many minutes
as asked of synthetic speech (fortunes read by the same voices). A false accept is a detection as the runtime reports
it (2 s refractory); the threshold chosen per word is the highest that still detects >= 95% with at most 1 false
accept per hour on all the negatives, real and synthetic (openWakeWord's 0.5 when none does).
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING

import numpy as np

from edgemm.export.evaluation.nonspeech import coloured_noise, rms
from edgemm.runtime.speech.wake import CHUNK, SAMPLE_RATE, WakeWord

if TYPE_CHECKING:
    from edgemm.bench.commands import WakeOptions

THRESHOLDS = [round(0.05 * i, 2) for i in range(1, 20)]
SNRS_DB = (None, 20, 10, 5)  # None: no noise
ESPEAK_VOICES = ("en-us+m3", "en-gb+f2", "en-us+f3", "en-gb-scotland+m1", "en-029+m2", "en-gb-x-rp+f4")
PIPER_RATES = (0.95, 1.1)
CONTEXTS = ("{}.", "{}, what time is it?")
TARGET_DETECTION, TARGET_FA_PER_HOUR = 0.95, 1.0
REFRACTORY_S = 2.0
# How the voices are asked to say a phrase where their spelling misleads them: espeak-ng reads "Mycroft" as "MIK-roft"
# (m'Ikr0ft), which is not the name; "my croft" gives "MY-croft" in every voice.
SPOKEN = {"hey_mycroft": "hey my croft"}
WAKE_NAMES = re.compile(r"jarvis|nabu|alexa|mycroft|my croft|rhasspy", re.IGNORECASE)  # not in the negatives
SILENCE_S = 1.0


def speakers() -> dict:
    """Voice name -> speak(text) -> 16 kHz samples."""
    from edgemm.export.distill.data import Espeak, Piper

    out, rng = {}, np.random.default_rng(0)
    piper = Piper()
    for rate in PIPER_RATES:
        out[f"piper x{rate}"] = lambda text, rate=rate: _piper(piper, text, rate)
    for voice in ESPEAK_VOICES:
        espeak = Espeak()
        espeak.LANGUAGES, espeak.VARIANTS = [voice.split("+")[0]], [voice.split("+")[1]]
        seed = int(rng.integers(1 << 31))
        out[f"espeak {voice}"] = lambda text, e=espeak, s=seed: e.speak(text, np.random.default_rng(s))[0]
    return out


def _piper(piper, text: str, rate: float) -> np.ndarray:
    from edgemm.export.distill.data import resample

    piper.synth.config = piper.config(length_scale=rate, noise_scale=0.0, noise_w_scale=0.0)
    speech = piper.synth.synthesize(text)
    return resample(speech.samples, speech.sample_rate, SAMPLE_RATE)


def noisy(speech: np.ndarray, snr_db: float | None, rng: np.random.Generator) -> np.ndarray:
    """``speech`` between silences, in pink noise ``snr_db`` below the speech's level (no noise for None)."""
    pad = np.zeros(int(SILENCE_S * SAMPLE_RATE), np.float32)
    audio = np.concatenate([pad, speech.astype(np.float32), pad])
    if snr_db is None:
        return audio
    noise = coloured_noise(rng, len(audio), "pink") * rms(speech) / 10 ** (snr_db / 20)
    return (audio + noise).astype(np.float32)


def events(scores: np.ndarray, threshold: float) -> int:
    """Detections in one stream's chunk scores, as WakeWord.feed reports them (one per refractory period)."""
    count, quiet_until = 0, -1
    refractory = int(round(REFRACTORY_S * SAMPLE_RATE / CHUNK))
    for i in np.flatnonzero(scores >= threshold):
        if i >= quiet_until:
            count, quiet_until = count + 1, i + refractory
    return count


def positive_peaks(detector: WakeWord, voices: dict) -> dict:
    """word -> [(voice, snr, peak score of that word)] over every positive case."""
    from edgemm.export.wake import WORDS

    rng, peaks = np.random.default_rng(1), {word: [] for word in detector.words}
    for word in detector.words:
        phrase = SPOKEN.get(word) or (WORDS[word][1] if word in WORDS else word.replace("_", " "))
        phrase = phrase.capitalize()
        for voice, say in voices.items():
            for context in CONTEXTS:
                speech = say(context.format(phrase))
                for snr in SNRS_DB:
                    scores = detector.scores(noisy(speech, snr, rng))[:, detector.words.index(word)]
                    peaks[word].append((voice, snr, float(scores.max())))
    return peaks


def real_speech() -> list[np.ndarray]:
    from edgemm.export.distill.data import read_audio, recordings
    from edgemm.export.evaluation.clips import dev_clips, extra_clips
    from edgemm.runtime.speech.audio import load_audio

    clips = [load_audio(c.path) for c in dev_clips()]
    try:
        clips += [load_audio(c.path) for c in extra_clips()]
    except Exception as e:  # offline without the cached sdists
        print(f"(extra clips not available: {str(e).splitlines()[0]})")
    return clips + [read_audio(path) for path, _ in recordings()]


def negative_sentences() -> list[str]:
    """Every fortune installed (Debian's ``fortunes`` adds ~6,000 sentences to fortunes-min's ~700) that names no
    wake word, in a fixed order."""
    from edgemm.export.distill.data import FORTUNES, fortune_sentences

    names = sorted(p.name for p in FORTUNES.glob("*") if p.is_file() and not p.suffix) if FORTUNES.exists() else []
    sentences = fortune_sentences(names=names)
    return [s for s in sentences if not WAKE_NAMES.search(s)]


def synthetic_speech(voices: dict, minutes: float) -> list[np.ndarray]:
    """Fortunes read by the voices in turn, up to ``minutes`` (or the sentences' end), one stream per voice."""
    sentences, streams = negative_sentences(), {name: [] for name in voices}
    total, i = 0.0, 0
    while total < minutes * 60 and i < len(sentences):
        name = list(voices)[i % len(voices)]
        audio = voices[name](sentences[i])
        streams[name] += [audio, np.zeros(SAMPLE_RATE // 2, np.float32)]
        total, i = total + len(audio) / SAMPLE_RATE, i + 1
    return [np.concatenate(parts) for parts in streams.values() if parts]


def false_accepts(detector: WakeWord, streams: list[np.ndarray]) -> tuple[float, dict]:
    """(hours of audio, word -> false accepts at each threshold)."""
    counts = {word: [0] * len(THRESHOLDS) for word in detector.words}
    for audio in streams:
        scores = detector.scores(audio)
        for w, word in enumerate(detector.words):
            for t, threshold in enumerate(THRESHOLDS):
                counts[word][t] += events(scores[:, w], threshold)
    return sum(len(a) for a in streams) / SAMPLE_RATE / 3600, counts


def choose(detection: list[float], fa_per_hour: list[float]) -> float:
    ok = [t for t, d, f in zip(THRESHOLDS, detection, fa_per_hour, strict=True) if d >= TARGET_DETECTION]
    ok = [t for t in ok if fa_per_hour[THRESHOLDS.index(t)] <= TARGET_FA_PER_HOUR]
    return max(ok) if ok else 0.5


def report(detector: WakeWord, peaks: dict, real: tuple, synthetic: tuple) -> dict:
    out = {"real_hours": round(real[0], 4), "synthetic_hours": round(synthetic[0], 4), "words": {}}
    for word in detector.words:
        cases = peaks[word]
        detection = [sum(p >= t for *_, p in cases) / len(cases) for t in THRESHOLDS]
        fa_real = [n / real[0] for n in real[1][word]]
        hours = real[0] + synthetic[0]
        fa_all = [(a + b) / hours for a, b in zip(real[1][word], synthetic[1][word], strict=True)]
        chosen = choose(detection, fa_all)
        i = THRESHOLDS.index(chosen)
        by_snr = {
            str(snr): round(sum(p >= chosen for _, s, p in cases if s == snr) / sum(s == snr for _, s, _ in cases), 4)
            for snr in SNRS_DB
        }
        by_voice = {
            voice: round(sum(p >= chosen for v, _, p in cases if v == voice) / sum(v == voice for v, *_ in cases), 4)
            for voice in dict.fromkeys(v for v, *_ in cases)
        }
        out["words"][word] = {
            "threshold": chosen,
            "cases": len(cases),
            "detection": round(detection[i], 4),
            "detection_by_snr_db": by_snr,
            "detection_by_voice": by_voice,
            "meets_target": detection[i] >= TARGET_DETECTION and fa_all[i] <= TARGET_FA_PER_HOUR,
            "false_accepts_real": real[1][word][i],
            "false_accepts_synthetic": synthetic[1][word][i],
            "curve": [
                {"threshold": t, "detection": round(d, 4), "fa_per_hour_real": round(fr, 2), "fa_synthetic": fs}
                for t, d, fr, fs in zip(THRESHOLDS, detection, fa_real, synthetic[1][word], strict=True)
            ],
        }
    return out


def run_bench_wake(args: WakeOptions) -> int:
    start = time.perf_counter()
    detector = WakeWord.load(args.model)
    voices = speakers()
    peaks = positive_peaks(detector, voices)
    real = false_accepts(detector, real_speech())
    synthetic = false_accepts(detector, synthetic_speech(voices, args.minutes)) if args.minutes else (0.0, {})
    if not synthetic[1]:
        synthetic = (0.0, {word: [0] * len(THRESHOLDS) for word in detector.words})
    result = report(detector, peaks, real, synthetic)
    result["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"edgemm bench wake: {len(voices)} voices x {len(CONTEXTS)} sentences x {len(SNRS_DB)} SNRs per word; "
        f"real speech {result['real_hours'] * 60:.1f} min, synthetic {result['synthetic_hours'] * 60:.1f} min"
    )
    for word, r in result["words"].items():
        print(
            f"  {word:12s} threshold {r['threshold']:.2f}  detection {r['detection']:.1%} of {r['cases']} "
            f"(by SNR {r['detection_by_snr_db']})  false accepts: real {r['false_accepts_real']}, "
            f"synthetic {r['false_accepts_synthetic']}; target {'met' if r['meets_target'] else 'NOT met'}"
        )
        print(f"  {'':12s} by voice {r['detection_by_voice']}")
    return 0
