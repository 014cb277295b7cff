"""What the server keeps between requests belongs to one client: KV caches (a match with another client's prompt
would show in ``cached_tokens``) and web assistant conversations (a client flooding them forgets its own)."""

from __future__ import annotations

import pytest

from edgemm.runtime.bundle import models_dir
from edgemm.runtime.server.models import ASSISTANT_SESSIONS, CACHE_SLOTS, CachePool, ServerModels, fair_victim

SMALL_LLM = "smollm2-135m-instruct-int4"


@pytest.fixture(scope="module")
def lm():
    from edgemm.runtime.llm import LanguageModel

    path = models_dir() / SMALL_LLM
    if not (path / "manifest.json").exists():
        pytest.skip(f"{path} missing: run `make setup`")
    return LanguageModel.load(path)


def test_the_flooding_owner_loses_its_own_entries():
    assert fair_victim(["a", "b", "b", "c", "b"]) == 1  # b holds the most: its least recently used
    assert fair_victim(["a", "b", "c"]) == 0  # all equal: the least recently used
    assert fair_victim(["victim"] + ["flood"] * 3) == 1


def _run(pool: CachePool, prompt: list[int], owner: str):
    """What a generation does with the cache it is given: keep what matches, then hold the prompt."""
    cache = pool.take(prompt, owner)
    reused = 0
    for a, b in zip(cache.tokens, prompt, strict=False):
        if a != b:
            break
        reused += 1
    cache.truncate(reused)
    cache.tokens.extend(prompt[reused:])
    cache.length = len(cache.tokens)
    return cache, reused


def test_a_cache_is_never_matched_against_another_clients_prompt(lm):
    pool = CachePool(lm)
    secret = [1, 2, 3, 4, 5, 6, 7, 8]
    victim_cache, _ = _run(pool, secret, "victim")
    for owner in ("attacker", "attacker-2"):
        cache, reused = _run(pool, secret, owner)
        assert reused == 0 and cache is not victim_cache
    # Filling every slot from one client evicts that client's caches, and takes over no other client's tokens.
    for i in range(3 * CACHE_SLOTS):
        cache, reused = _run(pool, [100 + i, 2, 3], "attacker")
        assert reused == 0
    assert any(c is victim_cache for _, c in pool.caches)
    cache, reused = _run(pool, secret + [9, 10], "victim")
    assert cache is victim_cache and reused == len(secret)


def test_a_client_flooding_conversations_forgets_its_own(lm, transcriber):
    models = ServerModels(lm, transcriber)
    try:
        victim = models.assistant("victim-conversation", owner="127.0.0.1")
        for i in range(4 * ASSISTANT_SESSIONS):
            models.assistant(f"flood-{i:04d}", owner="127.0.0.2")
        assert models.assistant("victim-conversation", owner="127.0.0.1") is victim
        assert len(models._sessions) == ASSISTANT_SESSIONS
        # The same conversation id from another client is another conversation.
        assert models.assistant("victim-conversation", owner="127.0.0.2") is not victim
    finally:
        models.shutdown()
