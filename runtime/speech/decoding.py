"""Choosing Whisper's tokens for one 30 s window: logit filters, greedy/sampling and beam search.

Running the model lives in :mod:`edgemm.runtime.speech.model`; this module only turns logits into tokens.
A window encoded shorter than 30 s (length-adaptive bundles) has fewer encoder positions: timestamps past its end
are suppressed, as the model cannot place a segment in audio it was not given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgemm.runtime import cancel
from edgemm.runtime.errors import OptionsError
from edgemm.runtime.limits import MAX_SEED, check_float, check_int
from edgemm.runtime.speech.model import WhisperONNX
from edgemm.runtime.speech.tokenizer import WhisperTokenizer

TASKS = ("transcribe", "translate")
MAX_INITIAL_TIMESTAMP = 1.0  # seconds: the first timestamp may not be later than this
SECONDS_PER_TIMESTAMP = 0.02  # one timestamp token step


@dataclass(frozen=True)
class DecodingOptions:
    task: str = "transcribe"  # "transcribe", or "translate" (to English; multilingual models)
    language: str | None = None  # language code such as "en"; None = detect (multilingual models)
    beam_size: int = 1  # 1 = greedy (or sampling when temperature > 0); >1 = beam search
    temperature: float = 0.0  # 0 = deterministic; >0 samples from softmax(logits / temperature)
    timestamps: bool = True  # predict segment timestamps
    max_new_tokens: int | None = None  # default: half the text context (Whisper's sample_len)
    patience: float = 1.0  # beam search stops after beam_size * patience finished candidates
    seed: int = 0  # random seed for sampling (the temperature fallback): the same audio gives the same text

    def __post_init__(self):
        """Types and ranges, checked once when created (a bad value raises OptionsError); the language is checked
        against a model by :func:`verify_options`."""
        if self.task not in TASKS:
            raise OptionsError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.language is not None and not isinstance(self.language, str):
            raise OptionsError(f"language must be a language code such as 'en', not {self.language!r}")
        checked = {
            "beam_size": check_int(self.beam_size, "beam size", 1, 16),
            "temperature": check_float(self.temperature, "temperature", 0.0, 100.0),
            "max_new_tokens": None
            if self.max_new_tokens is None
            else check_int(self.max_new_tokens, "max_new_tokens", 1, 1 << 16),
            "patience": check_float(self.patience, "patience", 0.0, 100.0, low_open=True),
            "seed": check_int(self.seed, "seed", 0, MAX_SEED),
            "timestamps": bool(self.timestamps),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


def verify_options(options: DecodingOptions, tokenizer: WhisperTokenizer) -> None:
    """Raise OptionsError naming the accepted values when an option does not suit this model."""
    languages = tokenizer.special.languages
    if options.language is not None and languages and options.language not in languages:
        raise OptionsError(f"unknown language {options.language!r}; this model knows: {', '.join(sorted(languages))}")
    if not languages and (options.task == "translate" or options.language not in (None, "en")):
        raise OptionsError("this model is English-only: it cannot translate or transcribe other languages")


@dataclass
class DecodingResult:
    tokens: list[int]  # sampled tokens, without the prompt and the end-of-text token
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    language: str | None = None


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class LogitFilters:
    """Whisper's token constraints, applied in place to logits [batch, vocab]."""

    suppress: np.ndarray  # never emitted
    suppress_begin: np.ndarray  # not as the first sampled token (blank, end-of-text)
    tokenizer: WhisperTokenizer
    timestamps: bool
    sample_begin: int
    max_initial_timestamp_index: int = field(default=int(MAX_INITIAL_TIMESTAMP / SECONDS_PER_TIMESTAMP))
    max_timestamp_index: int | None = None  # a shorter window's end (its encoder positions); None: 30 s

    def apply(self, logits: np.ndarray, sequences: list[list[int]]) -> None:
        s = self.tokenizer.special
        logits[:, self.suppress] = -np.inf
        if len(sequences[0]) == self.sample_begin:
            logits[:, self.suppress_begin] = -np.inf
        if not self.timestamps:
            logits[:, s.no_timestamps :] = -np.inf
            return
        self._timestamp_rules(logits, sequences)

    def _timestamp_rules(self, logits: np.ndarray, sequences: list[list[int]]) -> None:
        ts, eot = self.tokenizer.special.timestamp_begin, self.tokenizer.special.eot
        logits[:, self.tokenizer.special.no_timestamps] = -np.inf
        if self.max_timestamp_index is not None:
            logits[:, ts + self.max_timestamp_index + 1 :] = -np.inf
        for k, seq in enumerate(sequences):
            sampled = seq[self.sample_begin :]
            last_ts = len(sampled) >= 1 and sampled[-1] >= ts
            penultimate_ts = len(sampled) < 2 or sampled[-2] >= ts
            if last_ts:
                if penultimate_ts:  # a pair of timestamps closed a segment: text must follow
                    logits[k, ts:] = -np.inf
                else:  # an opening or closing timestamp: no text right after a closing one
                    logits[k, :eot] = -np.inf
            stamps = [t for t in sampled if t >= ts]
            if stamps:  # timestamps never go backwards
                last = stamps[-1] if (last_ts and not penultimate_ts) else stamps[-1] + 1
                logits[k, ts:last] = -np.inf
        if len(sequences[0]) == self.sample_begin:  # the window starts with a timestamp, early enough
            logits[:, :ts] = -np.inf
            logits[:, ts + self.max_initial_timestamp_index + 1 :] = -np.inf
        logprobs = log_softmax(logits)
        for k in range(len(sequences)):
            stamp_mass = np.logaddexp.reduce(logprobs[k, ts:])
            if stamp_mass > logprobs[k, :ts].max():  # timestamps are likelier than any single text token
                logits[k, :ts] = -np.inf


class WindowDecoder:
    """Decodes one window: ``decode(cross_kv, prompt, options) -> DecodingResult``."""

    def __init__(self, model: WhisperONNX, tokenizer: WhisperTokenizer, suppress, suppress_begin):
        self.model, self.tokenizer = model, tokenizer
        s = tokenizer.special
        extra = [s.translate, s.transcribe, s.sot, s.sot_prev, s.no_speech]
        self.suppress = np.array(sorted(set(suppress) | set(extra)), dtype=np.int64)
        self.suppress_begin = np.array(sorted(set(suppress_begin)), dtype=np.int64)

    def detect_language(self, cross) -> tuple[str, dict[str, float]]:
        """Most likely language code and the probability of each (multilingual models)."""
        languages = self.tokenizer.special.languages
        cache = self.model.new_cache(cross)
        logits = self.model.step(np.array([[self.tokenizer.special.sot]]), cache)[0]
        codes, ids = list(languages), np.array(list(languages.values()))
        probs = np.exp(log_softmax(logits[ids]))
        return codes[int(probs.argmax())], dict(zip(codes, probs.tolist(), strict=True))

    def decode(self, cross, prompt: list[int], options: DecodingOptions, rng=None) -> DecodingResult:
        s, n_ctx = self.tokenizer.special, self.model.n_text_ctx
        language = options.language
        if s.languages and language is None:
            language, _ = self.detect_language(cross)
        start = self.tokenizer.sot_sequence(language, options.task, options.timestamps)
        prefix = [s.sot_prev] + prompt[-(n_ctx // 2 - 1) :] if prompt else []
        initial = prefix + start
        sample_len = options.max_new_tokens or n_ctx // 2
        sample_len = min(sample_len, n_ctx - len(initial))
        beams = options.beam_size if options.temperature == 0 else 1
        positions = cross[0].shape[3]  # one timestamp step (0.02 s) per encoder position
        filters = LogitFilters(
            self.suppress,
            self.suppress_begin,
            self.tokenizer,
            options.timestamps,
            len(initial),
            max_timestamp_index=positions if positions < self.model.n_audio_ctx else None,
        )

        cache = self.model.new_cache(cross, batch=beams)
        # Feed up to <|startoftranscript|> first: its logits give the no-speech probability.
        sot_end = len(prefix) + 1
        logits = self.model.step(np.array([initial[:sot_end]] * beams), cache)
        no_speech_prob = float(np.exp(log_softmax(logits[0])[s.no_speech]))
        if len(initial) > sot_end:
            logits = self.model.step(np.array([initial[sot_end:]] * beams), cache)

        if beams > 1:
            tokens, logprob = self._beam_search(logits, cache, initial, filters, sample_len, options)
        else:
            tokens, logprob = self._sample(logits, cache, initial, filters, sample_len, options, rng)
        avg = logprob / (len(tokens) + 1)
        return DecodingResult(tokens, avg, no_speech_prob, options.temperature, language)

    def _sample(self, logits, cache, initial, filters, sample_len, options, rng):
        eot, seq, total = self.tokenizer.special.eot, list(initial), 0.0
        for _ in range(sample_len):
            cancel.check()
            filters.apply(logits, [seq])
            logprobs = log_softmax(logits)[0]
            if options.temperature == 0:
                token = int(logits[0].argmax())
            else:
                probs = np.exp(log_softmax(logits[0] / options.temperature))
                token = int((rng or np.random.default_rng(options.seed)).choice(len(probs), p=probs))
            total += float(logprobs[token])
            if token == eot:
                break
            seq.append(token)
            logits = self.model.step(np.array([[token]]), cache)
        return seq[len(initial) :], total

    def _beam_search(self, logits, cache, initial, filters, sample_len, options):
        eot, n = self.tokenizer.special.eot, options.beam_size
        sequences, scores = [list(initial)] * n, np.zeros(n)
        finished: dict[tuple, float] = {}
        for _ in range(sample_len):
            cancel.check()
            filters.apply(logits, sequences)
            logprobs = log_softmax(logits)
            candidates: dict[tuple, tuple[float, int]] = {}
            for i, seq in enumerate(sequences):
                for token in np.argsort(-logprobs[i])[: n + 1]:
                    new = (*seq, int(token))
                    if new not in candidates:
                        candidates[new] = (scores[i] + float(logprobs[i, token]), i)
            kept, parents, new_scores = [], [], []
            for seq, (score, parent) in sorted(candidates.items(), key=lambda kv: -kv[1][0]):
                if seq[-1] == eot:
                    finished.setdefault(seq[:-1], score)
                else:
                    kept.append(list(seq))
                    parents.append(parent)
                    new_scores.append(score)
                if len(kept) == n:
                    break
            if len(finished) >= n * options.patience or not kept:
                break
            sequences, scores = kept, np.array(new_scores)
            cache.reorder(np.array(parents))
            logits = self.model.step(np.array([[q[-1]] for q in sequences]), cache)
        for seq, score in zip(sequences, scores, strict=True):  # unfinished beams compete too
            finished.setdefault(tuple(seq), float(score))

        def ranked(item):  # length-normalized log probability, as Whisper without a length penalty
            seq, score = item
            return score / max(1, len(seq) - len(initial))

        best, score = max(finished.items(), key=ranked)
        return list(best[len(initial) :]), score
