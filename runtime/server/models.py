"""The models a server holds: each bundle loaded once, each model with its own worker thread.

Which jobs go where: chat completions, image questions and the web assistant's turns run on the ``llm`` worker (the
language model answers all of them); transcriptions on the ``speech`` worker; ``/v1/audio/speech`` on the ``voice``
worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edgemm.runtime.llm import LanguageModel
from edgemm.runtime.llm.model import KVCache
from edgemm.runtime.server.workers import Worker
from edgemm.runtime.speech import Transcriber

log = logging.getLogger(__name__)

CACHE_SLOTS = 4  # KV caches kept between chat requests (each grows only as far as its conversation)
ASSISTANT_SESSIONS = 16  # web assistant conversations kept (the least recently used one is forgotten first)
SESSION_IDLE_S = 3600  # a web conversation idle this long is forgotten
CONTINUATION_SLACK = 8  # tokens at the end of a cached sequence that a continuing conversation may encode differently


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def fair_victim(owners: list[str]) -> int:
    """Which entry to forget when all slots are taken, given each entry's owner, least recently used first: the
    least recently used of the owner holding the most. A client that floods the slots evicts its own entries, not
    another client's."""
    counts = Counter(owners)
    most = max(counts.values())
    return next(i for i, owner in enumerate(owners) if counts[owner] == most)


class CachePool:
    """KV caches kept between chat requests, each owned by one client. A client resends the whole conversation each
    turn; the client's cache holding the longest beginning of the new prompt is reused, so only the new turn runs
    through the model. A client never runs in, nor learns the length of a match with, another client's cache (its
    ``cached_tokens`` would tell a guessed prompt from a wrong one). Used from the llm worker's thread only.

    The answer is the same up to rounding: a token run in a batch (prefill) or alone (after a reused prefix) rounds
    differently in the int4 kernels, so a long greedy answer, or a sampled one, can differ late, as in every engine
    that reuses caches."""

    def __init__(self, lm: LanguageModel, slots: int = CACHE_SLOTS):
        self.lm, self.slots = lm, slots
        self.caches: list[tuple[str, KVCache]] = []  # (owner, cache), least recently used first

    def take(self, prompt: list[int], owner: str = "") -> KVCache:
        """The cache to run ``prompt`` in for ``owner``: the owner's cache whose sequence it continues (the earlier
        turns of the same conversation; the last few generated tokens may differ from the re-encoded answer) or
        repeats (the same request again), else a new one while there are free slots, else a forgotten one
        (:func:`fair_victim`)."""
        shared = {id(c): _common_prefix(c.tokens, prompt) for o, c in self.caches if o == owner}

        def continues(cache: KVCache) -> bool:
            n = shared[id(cache)]
            return n > 0 and (n >= len(cache.tokens) - CONTINUATION_SLACK or n >= len(prompt) - 1)

        ours = [entry for entry in self.caches if entry[0] == owner and continues(entry[1])]
        if ours:
            entry = max(ours, key=lambda e: shared[id(e[1])])
            self.caches.remove(entry)
            cache = entry[1]
        elif len(self.caches) < self.slots:
            cache = self.lm.new_cache()
        else:
            cache = self.caches.pop(fair_victim([o for o, _ in self.caches]))[1]
            cache.reset()  # another client's tokens: nothing of them may be reused
        self.caches.append((owner, cache))
        return cache


@dataclass
class ServerModels:
    lm: LanguageModel
    transcriber: Transcriber | None = None
    images: object | None = None  # ImageQuestion
    synthesizer: object | None = None  # tts.Synthesizer
    wake: object | None = None  # a wake bundle (each listener runs its own detector on it)
    max_queue: int = 8
    why_no_voice: str = "install the tts extra and a Piper voice"  # what /v1/audio/speech says without a synthesizer
    workers: dict = field(default_factory=dict)
    cache_pool: CachePool | None = None
    _sessions: dict = field(default_factory=dict)  # (owner, session) -> (Assistant, last used), oldest first
    _sessions_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.workers = {"llm": Worker("llm", self.max_queue)}
        if self.transcriber is not None:
            self.workers["speech"] = Worker("speech", self.max_queue)
        if self.synthesizer is not None:
            self.workers["voice"] = Worker("voice", self.max_queue)
        self.cache_pool = CachePool(self.lm)

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        speech_model: str | Path | None = None,
        vision_model: str | Path | None = None,
        threads: int | None = None,
        context: int | None = None,
        speech: bool = True,
        vision: bool = True,
        voice: bool = True,
        max_queue: int = 8,
        voice_model: str | Path | None = None,
        wake: bool = True,
        wake_model: str | Path | None = None,
    ) -> ServerModels:
        """The default bundles (or those named). The language model is required; a speech, vision or voice part
        that is turned off is not loaded, and its routes answer 404 (a missing default bundle is an error: the
        message says how to build it). ``voice_model``: a voice bundle or Piper ``.onnx`` voice instead of the
        default voice. Wake words come from ``wake_model``, else from the default wake bundle when it is built."""
        from edgemm.runtime.parts import Parts
        from edgemm.runtime.speech.wake import optional_bundle

        parts = Parts.load(
            model,
            speech_model,
            vision_model,
            threads,
            context,
            speech=speech,
            vision=vision,
            voice=voice,
            voice_model=voice_model,
            without_voice="/v1/audio/speech is off",
        )
        why = cls.why_no_voice if voice else "speech output was turned off by --no-tts"
        wake_bundle = optional_bundle(wake_model, off=not wake)
        models = parts.lm, parts.transcriber, parts.images, parts.synthesizer, wake_bundle
        return cls(*models, max_queue=max_queue, why_no_voice=why)

    def names(self) -> dict[str, str]:
        """Model id -> what it does, for /v1/models."""
        names = {self.lm.name: "chat"}
        if self.images is not None:
            names.setdefault(self.images.model_name, "chat")
        if self.transcriber is not None:
            names[self.transcriber.bundle.manifest.get("name") or self.transcriber.bundle.path.name] = "transcription"
        if self.synthesizer is not None:
            names[self.synthesizer.name] = "speech"
        return names

    def assistant(self, session: str, owner: str = "", voice: bool = True):
        """The web assistant conversation ``session`` of client ``owner`` (created on first use; beyond
        ASSISTANT_SESSIONS one is forgotten, see :func:`fair_victim`, and any idle for SESSION_IDLE_S). Its models
        are the server's own: nothing is loaded again. ``voice=False``: its answers are text only (when created)."""
        from edgemm.runtime.assistant import Assistant
        from edgemm.runtime.profiles import active_profile

        now = time.monotonic()
        key = (owner, session)
        with self._sessions_lock:
            for k in [k for k, (_, used) in self._sessions.items() if now - used > SESSION_IDLE_S]:
                del self._sessions[k]
            entry = self._sessions.pop(key, None)
            synthesizer = self.synthesizer if voice else None
            if entry is None:  # the machine profile's history, as `edgemm listen` has it
                history = active_profile().history
                entry = (Assistant(self.transcriber, self.lm, self.images, synthesizer, history=history), now)
            assistant = entry[0]
            if len(self._sessions) >= ASSISTANT_SESSIONS:
                keys = list(self._sessions)  # least recently used first
                del self._sessions[keys[fair_victim([o for o, _ in keys])]]
            self._sessions[key] = (assistant, now)
            return assistant

    def ringing(self, session: str, owner: str = ""):
        """The assistant of conversation ``session`` when one of its timers has gone off, else None (nothing is
        created or refreshed: the web page polls this)."""
        with self._sessions_lock:
            entry = self._sessions.get((owner, session))
        if entry is None:
            return None
        assistant = entry[0]
        due = assistant.skills.timers.next_due()
        return assistant if due is not None and due <= assistant.clock.monotonic() else None

    def shutdown(self) -> None:
        for worker in self.workers.values():
            worker.shutdown()
