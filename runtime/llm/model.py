"""The language model of an ``llm`` bundle: token embedding + decoder graphs and a KV cache that grows in place.

The decoder's present KV outputs are bound (onnxruntime I/O binding) to the same buffers as its past inputs, so
GroupQueryAttention appends new keys/values in place: no per-token copy of the cache. The buffers grow by doubling
when a sequence outgrows them, up to the context window.

Threads: everything that changes while a sequence runs (the I/O binding, the logits buffer, the cache itself) lives
in its :class:`KVCache`, so one :class:`LanguageModel` serves any number of threads, each with its own cache;
onnxruntime sessions are safe to ``run`` from several threads at once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgemm.runtime.bundle import Bundle, open_bundle
from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.limits import check_int, check_memory_for
from edgemm.runtime.profiles import active_profile
from edgemm.runtime.sessions import create_session

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 2048  # tokens; the KV cache for SmolLM2-135M at 2048 is 94 MB
MIN_CONTEXT = 16  # tokens: a window any chat template's prompt fits in
FIRST_CAPACITY = 256


class ContextError(EdgemmError):
    """A prompt does not fit in the context window."""


@dataclass(frozen=True)
class LLMConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_positions: int

    @classmethod
    def from_manifest(cls, model: dict) -> LLMConfig:
        return cls(**{k: int(model[k]) for k in cls.__dataclass_fields__})


class CacheBusyError(EdgemmError):
    """A KV cache is already in use by a generation that has not finished (one cache holds one sequence)."""


class KVCache:
    """Per-layer key/value buffers [1, kv_heads, capacity, head_dim], the number of positions filled, and the decoder
    I/O binding and logits buffer of this sequence.

    One sequence: not safe to share between threads. A Generation claims the cache for as long as it runs
    (:meth:`claim`); a second one on the same cache meanwhile raises CacheBusyError.
    """

    def __init__(self, cfg: LLMConfig, limit: int):
        self.cfg, self.limit = cfg, limit
        self.length = 0
        self.tokens: list[int] = []  # token ids whose keys/values are in the cache (empty for spliced embeddings)
        self.capacity = 0
        self.arrays: list[np.ndarray] = []  # own the memory that the OrtValues below point at
        self.buffers: list[ort.OrtValue] = []
        # The decoder binding with the buffers above bound as past/present (made by the model that runs this cache).
        self.binding: ort.IOBinding | None = None
        self.bound_to: ort.InferenceSession | None = None  # the session ``binding`` belongs to
        self.logits: tuple[np.ndarray, ort.OrtValue] | None = None  # last-position logits [1, 1, V] and its OrtValue
        # The logits after the last of ``tokens``, kept by a caller that ran a whole prompt ahead of its answer
        # (:meth:`Chat.read_ahead`); any change to the cache drops them.
        self.next_logits: np.ndarray | None = None
        self._claim = threading.Lock()

    @property
    def busy(self) -> bool:
        """Whether a generation is running on this cache."""
        return self._claim.locked()

    def claim(self) -> None:
        """Mark the cache as used by one running generation; CacheBusyError if another one holds it."""
        if not self._claim.acquire(blocking=False):
            raise CacheBusyError("this KV cache is in use by another generation that has not finished")

    def release(self) -> None:
        """End the claim made by :meth:`claim`."""
        self._claim.release()

    def reserve(self, needed: int) -> bool:
        """Make room for ``needed`` positions; True if the buffers were replaced (bindings must be refreshed)."""
        if needed <= self.capacity:
            return False
        if needed > self.limit:
            raise ContextError(f"{needed} tokens do not fit in the context window of {self.limit}")
        capacity = min(self.limit, max(FIRST_CAPACITY, self.capacity * 2, needed))
        shape = (1, self.cfg.num_kv_heads, capacity, self.cfg.head_dim)
        arrays = [np.zeros(shape, np.float32) for _ in range(2 * self.cfg.num_layers)]
        for new, old in zip(arrays, self.arrays, strict=False):
            new[:, :, : self.length] = old[:, :, : self.length]
        self.arrays, self.capacity = arrays, capacity
        self.buffers = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
        return True

    def shared(self, ids: list[int]) -> int:
        """How many of the first ``ids`` the cache holds."""
        common = 0
        for a, b in zip(self.tokens, ids, strict=False):
            if a != b:
                break
            common += 1
        return common

    def keep_prefix(self, ids: list[int]) -> int:
        """Keep the longest start of ``ids`` the cache holds (earlier turns of a chat), at most all but the last id
        (one must run to give logits); returns how many were kept: run ``ids`` from there."""
        common = min(self.shared(ids), len(ids) - 1)
        self.truncate(common)
        return common

    def truncate(self, length: int) -> None:
        """Forget positions from ``length`` on (their memory is simply overwritten later)."""
        if length < len(self.tokens):
            self.next_logits = None
        self.length = min(self.length, length)
        del self.tokens[self.length :]

    def reset(self) -> None:
        self.truncate(0)


class LanguageModel:
    """Embedding + decoder sessions, the tokenizer and special tokens of one ``llm`` bundle (or of a ``vlm``
    bundle's language model, which VisionLanguageModel builds from the bundle it opened).

    Safe to share between threads: it holds no per-sequence state. Each generation runs on its own KVCache, which
    carries the decoder's I/O binding and logits buffer; concurrent generations share only the sessions.
    """

    def __init__(self, bundle: Bundle, threads: int | None = None, context: int | None = None):
        m = bundle.manifest
        self.bundle = bundle
        self.config = LLMConfig.from_manifest(m["model"])
        limit = self.config.max_positions
        profile = active_profile()
        if context is None:  # the machine profile's window (a smaller KV cache on small boards), else the default
            self.context = min(profile.context or DEFAULT_CONTEXT, limit)
        else:  # checked before the graphs load
            self.context = check_int(context, "context", MIN_CONTEXT, limit)
        self.grammar_slices = profile.grammar_slices  # for llguidance's view of the tokenizer (llm/constrain.py)
        check_memory_for(*bundle.graph_files())
        graphs = m["graphs"]
        self.embed_session = create_session(bundle.file(graphs["embed"]), threads=1)
        self.decoder = create_session(bundle.file(graphs["decoder"]), threads, spinning=True)
        self.tokenizer = bundle.tokenizer(m["tokenizer"])
        self.chat_template = bundle.text(m["chat_template"])
        self.special = m["special_tokens"]
        self.eos_ids = set(self.special["eos_token_ids"])
        self._mask = np.ones((1, self.context), np.int64)  # read only: shared by every cache

    @classmethod
    def load(cls, path: str | Path | None = None, threads: int | None = None, context: int | None = None):
        return cls(open_bundle(path, "llm"), threads=threads, context=context)

    @property
    def name(self) -> str:
        return self.bundle.manifest.get("name") or self.bundle.path.name

    def new_cache(self) -> KVCache:
        return KVCache(self.config, self.context)

    def embed(self, ids) -> np.ndarray:
        ids = np.asarray(ids, np.int64).reshape(1, -1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise EdgemmError(f"token id out of range 0..{self.config.vocab_size - 1}")
        return self.embed_session.run(None, {"input_ids": ids})[0]

    def forward(self, embeds: np.ndarray, cache: KVCache, all_logits: bool = False) -> np.ndarray:
        """Run ``embeds`` [1, n, D] after the cache; return logits [n, V] (all positions) or [V] (the last)."""
        n = embeds.shape[1]
        if n == 0:
            raise EdgemmError("nothing to run: no input tokens")
        total = cache.length + n
        cache.next_logits = None
        if total > self.context:
            raise ContextError(f"{total} tokens do not fit in the context window of {self.context}")
        io = self._binding(cache, total)
        inputs = {
            "inputs_embeds": np.ascontiguousarray(embeds, np.float32),
            "attention_mask": self._mask[:, :total],
            "logits_to_keep": np.array(0 if all_logits else 1, np.int64),
        }
        for name, array in inputs.items():
            io.bind_cpu_input(name, array)
        out, logits = cache.logits
        if all_logits:
            out = np.empty((1, n, self.config.vocab_size), np.float32)
            logits = ort.OrtValue.ortvalue_from_numpy(out)
        io.bind_ortvalue_output("logits", logits)
        try:
            self.decoder.run_with_iobinding(io)
        except Exception as e:  # onnxruntime's own exception types
            raise EdgemmError(f"decoder failed: {str(e).splitlines()[0]}") from None
        cache.length = total
        return out[0] if all_logits else out[0, -1].copy()

    def _binding(self, cache: KVCache, total: int) -> ort.IOBinding:
        """The cache's own decoder binding, made on first use and rebound when its buffers were replaced."""
        replaced = cache.reserve(total)
        if cache.bound_to is not self.decoder:
            cache.binding, cache.bound_to, replaced = self.decoder.io_binding(), self.decoder, True
            # OrtValues made from numpy arrays do not own them: keep the array alive beside it.
            array = np.zeros((1, 1, self.config.vocab_size), np.float32)
            cache.logits = array, ort.OrtValue.ortvalue_from_numpy(array)
        io = cache.binding
        if replaced:  # a new binding, or new buffers: bind them as past and present
            for i in range(self.config.num_layers):
                for k, kv in enumerate(("key", "value")):
                    buffer = cache.buffers[2 * i + k]
                    io.bind_ortvalue_input(f"past.{i}.{kv}", buffer)
                    io.bind_ortvalue_output(f"present.{i}.{kv}", buffer)
        return io

    def prefill_tokens(self, ids: list[int], cache: KVCache, all_logits: bool = False) -> np.ndarray:
        """Append ``ids`` to the cache (reusing what the cache already holds of them is the caller's job)."""
        logits = self.forward(self.embed(ids), cache, all_logits)
        cache.tokens.extend(int(i) for i in ids)
        return logits
