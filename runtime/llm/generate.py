"""Token generation: sampling options, stop conditions and streaming text that never splits a UTF-8 character."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from edgemm.runtime.errors import OptionsError
from edgemm.runtime.limits import MAX_NEW_TOKENS, check_float, check_int, check_seed
from edgemm.runtime.llm.constrain import Constraint, Grammar
from edgemm.runtime.llm.model import CacheBusyError, KVCache, LanguageModel

log = logging.getLogger(__name__)

MAX_STOPS = 16  # stop strings per generation
MAX_STOP_CHARS = 1000  # characters per stop string: far past any real one (OpenAI's own examples are a few words)


@dataclass(frozen=True)
class GenerationOptions:
    """How an answer is generated. Checked once, when created: a bad value raises OptionsError. Immutable: safe to
    share between threads."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off; > 1 discourages tokens already in the prompt or the answer
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings (not included in the answer); any sequence is stored as a tuple
    grammar: Grammar | None = None  # the answer must match it (constrained decoding); None: free text

    def __post_init__(self):
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (list, tuple)) or any(not isinstance(s, str) or not s for s in stop):
            raise OptionsError("stop must be a non-empty text or a list of them")
        if len(stop) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stop):
            raise OptionsError(f"stop takes at most {MAX_STOPS} texts of at most {MAX_STOP_CHARS} characters each")
        if self.grammar is not None and not isinstance(self.grammar, Grammar):
            raise OptionsError(f"grammar must be a Grammar, not {type(self.grammar).__name__}")
        checked = {
            "stop": tuple(stop),
            "max_new_tokens": check_int(self.max_new_tokens, "max_new_tokens", 1, MAX_NEW_TOKENS),
            "temperature": check_float(self.temperature, "temperature", 0.0, 100.0),
            "top_k": check_int(self.top_k, "top_k", 0, 1 << 22),
            "top_p": check_float(self.top_p, "top_p", 0.0, 1.0, low_open=True),
            "repetition_penalty": check_float(self.repetition_penalty, "repetition_penalty", 0.0, 100.0, True),
            "seed": check_seed(self.seed),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


class Sampler:
    """Picks the next token from logits: repetition penalty, then greedy or temperature / top-k / top-p sampling.

    Holds its random generator: one per generation, not shared between threads."""

    def __init__(self, options: GenerationOptions):
        self.o = options
        self.rng = np.random.default_rng(options.seed)

    def __call__(self, logits: np.ndarray, seen: np.ndarray) -> int:
        o = self.o
        if o.repetition_penalty != 1.0 and seen.size:
            logits = logits.copy()
            ids = np.unique(seen)
            picked = logits[ids]
            logits[ids] = np.where(picked > 0, picked / o.repetition_penalty, picked * o.repetition_penalty)
        if o.temperature == 0:
            return int(np.argmax(logits))
        x = logits.astype(np.float64) / o.temperature
        if o.top_k and o.top_k < x.size:
            kth = np.partition(x, -o.top_k)[-o.top_k]
            x = np.where(x < kth, -np.inf, x)
        p = np.exp(x - x.max())
        p /= p.sum()
        if o.top_p < 1.0:
            order = np.argsort(-p)
            cumulative = np.cumsum(p[order])
            keep = order[: int(np.searchsorted(cumulative, o.top_p)) + 1]  # smallest set with mass >= top_p
            mask = np.zeros_like(p)
            mask[keep] = p[keep]
            p = mask / mask.sum()
        return int(self.rng.choice(p.size, p=p))


class StreamDecoder:
    """Incremental detokenization: emits text only once its bytes form whole characters.

    Byte-level BPE tokens can end inside a multi-byte character; the decoder then returns U+FFFD. Text is held back
    until the character is complete, and each call decodes only a short window of recent tokens. One per
    generation: not shared between threads.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the window used as left context
        self.read = 0  # tokens already turned into emitted text

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is left (an incomplete character at the very end shows as U+FFFD)."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :]


def _failure(s: str) -> list[int]:
    """Knuth-Morris-Pratt: for each prefix s[:i+1], the length of its longest proper prefix that is also a suffix."""
    fail, k = [0] * len(s), 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = fail[k - 1]
        k += s[i] == s[k]
        fail[i] = k
    return fail


class StopMatcher:
    """Holds back text that could be the start of a stop string; reports when one is complete. Each stop string is
    matched by a Knuth-Morris-Pratt automaton, so a piece costs time linear in its own length whatever the stop
    strings' lengths. One per generation: not shared between threads."""

    def __init__(self, stops: list[str]):
        self.stops = list(stops)
        self.fails = [_failure(s) for s in self.stops]
        self.states = [0] * len(self.stops)  # characters of each stop string matched at the end of the text so far
        self.pending = ""  # text held back: the longest partial match
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        buffer, held = self.pending + text, len(self.pending)
        for at, char in enumerate(text, start=held):
            for i, (stop, fail) in enumerate(zip(self.stops, self.fails, strict=True)):
                k = self.states[i]
                while k and char != stop[k]:
                    k = fail[k - 1]
                k += char == stop[k]
                if k == len(stop):
                    self.stopped, self.pending = True, ""
                    return buffer[: at + 1 - k]
                self.states[i] = k
        hold = max(self.states)
        out, self.pending = buffer[: len(buffer) - hold], buffer[len(buffer) - hold :]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        self.states = [0] * len(self.stops)
        return out


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    prefilled_tokens: int = 0  # prompt tokens actually run (the rest came from the cache)
    new_tokens: int = 0
    first_token_s: float = 0.0  # prefill + first sampled token
    decode_s: float = 0.0  # every later token

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "prefilled_tokens": self.prefilled_tokens,
            "new_tokens": self.new_tokens,
            "first_token_s": round(self.first_token_s, 4),
            "decode_tokens_per_s": round(self.decode_tokens_per_s, 1),
        }


class Generation:
    """An answer being generated: iterate it for text pieces as they are ready.

    After iteration (or ``close()``), ``text``, ``tokens``, ``finish_reason`` ("eos", "stop", "length",
    "context", "interrupted") and ``stats`` describe the answer. The KV cache then holds the prompt and every
    generated token that was run.

    One answer: read it from one thread; a second thread reading it at the same time gets CacheBusyError. It claims its KV cache from the first piece until
    it ends or is closed; another Generation on the same cache meanwhile raises CacheBusyError. Generations on
    different caches run in parallel on one LanguageModel.
    """

    def __init__(
        self,
        lm: LanguageModel,
        cache: KVCache,
        prompt: list[int],
        options: GenerationOptions,
        on_finish=None,
        embeds=None,
    ):
        self.lm, self.cache, self.prompt = lm, cache, list(prompt)
        self.embeds = embeds  # prompt embeddings with image features spliced in (then the cache is not reused)
        self.options = options
        self.tokens: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.stats = GenerationStats(prompt_tokens=len(prompt))
        # Checked now: a grammar the model cannot follow is refused before the answer starts.
        self.constraint = Constraint(lm, options.grammar) if options.grammar is not None else None
        self._on_finish = on_finish
        self._steps = self._run()
        self._reading = threading.Lock()
        self._cancelled = False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if not self._reading.acquire(blocking=False):
            raise CacheBusyError("this answer is being read by another thread: read each Generation from one thread")
        try:
            return next(self._steps)
        finally:
            self._reading.release()

    def close(self) -> None:
        """Stop the answer: at once, or -- when another thread is reading it -- after the token being computed."""
        self._cancelled = True
        if self._reading.acquire(blocking=False):
            try:
                self._steps.close()
            finally:
                self._reading.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def result(self) -> str:
        """Run to the end and return the whole answer."""
        for _ in self:
            pass
        return self.text

    def _prefill(self) -> np.ndarray:
        cache, lm = self.cache, self.lm
        if self.embeds is not None:
            cache.reset()
            self.stats.prefilled_tokens = len(self.prompt)
            logits = lm.forward(self.embeds, cache)
            cache.tokens.extend([-1] * len(self.prompt))  # positions hold image features: never matched for reuse
            return logits
        if cache.next_logits is not None and cache.tokens == self.prompt:  # the prompt was run ahead of the answer
            self.stats.prefilled_tokens = 0
            logits, cache.next_logits = cache.next_logits, None
            return logits
        common = cache.keep_prefix(self.prompt)  # run only what the cache does not hold yet
        self.stats.prefilled_tokens = len(self.prompt) - common
        return lm.prefill_tokens(self.prompt[common:], cache)

    def _run(self):
        lm, o = self.lm, self.options
        sampler, stream, stops = Sampler(o), StreamDecoder(lm.tokenizer), StopMatcher(o.stop)
        seen = np.array(self.prompt, np.int64)
        self.cache.claim()
        start = time.perf_counter()
        try:
            logits = self._prefill()
            constraint = self.constraint
            while True:
                if constraint is not None:
                    logits = constraint.mask(logits)
                token = sampler(logits, seen)
                if constraint is not None:
                    constraint.advance(token)
                if not self.tokens:
                    self.stats.first_token_s = time.perf_counter() - start
                    start = time.perf_counter()
                if token in lm.eos_ids:
                    self.finish_reason = "eos"
                    break
                self.tokens.append(token)
                self.stats.new_tokens = len(self.tokens)
                seen = np.append(seen, token)
                piece = stops.feed(stream.push(token))
                if piece:
                    self.text += piece
                    yield piece
                if stops.stopped:
                    self.finish_reason = "stop"
                    break
                if constraint is not None and constraint.finished:  # the grammar allows only the end: no more steps
                    self.finish_reason = "eos"
                    break
                if self._cancelled:
                    break
                if len(self.tokens) >= o.max_new_tokens:
                    self.finish_reason = "length"
                    break
                if self.cache.length + 1 > lm.context:
                    self.finish_reason = "context"
                    log.info("the answer reached the end of the context window (%d tokens)", lm.context)
                    break
                logits = lm.prefill_tokens([token], self.cache)
            if not (stops.stopped or self._cancelled):
                tail = stops.feed(stream.flush()) + stops.flush()
                if tail:
                    self.text += tail
                    yield tail
        except GeneratorExit:
            self.finish_reason = self.finish_reason or "interrupted"
            raise
        finally:
            self.stats.decode_s = time.perf_counter() - start
            if self.finish_reason is None:
                self.finish_reason = "interrupted"
            self.cache.release()
            if self._on_finish is not None:
                self._on_finish(self)
