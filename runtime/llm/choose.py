"""Which tool a call names: the model's own choice, checked the other way round where it is unsure.

A small model that must call one of several tools often names the one whose words it saw last ("Message Tom: the
meeting moved to 3 pm" -> a timer). Where its choice is unsure, each likely tool is also scored by how probable the
request is after the tool's own description ("noisy channel" scoring), and the first call is held to the tool with
the best sum. Method and numbers: docs/TOOLS.md ("Which tool").
"""

from __future__ import annotations

import numpy as np

from edgemm.runtime import cancel
from edgemm.runtime.llm.constrain import JSON_STYLE
from edgemm.runtime.llm.tools import CALL_OPEN, CallGrammar, Tool

SURE = 0.9  # the model's own choice stands when its probability among the likely tools is at least this
CANDIDATES = 8  # the likely tools: the most probable by the first token of their names
DESCRIPTION_CHARS = 300  # of a tool's description, in the channel prompt
REQUEST_CHARS = 500  # of the request, in the channel prompt
ROOM = 64  # tokens after the prompt that scoring a name may take
NAME_PREFIX = CALL_OPEN + '{"name' + JSON_STYLE["key_separator"] + '"'  # what the grammar writes before a name


def first_tool(lm, cache, prompt: list[int], grammar, request: str):
    """``grammar``, with its first call held to the best tool when the model is unsure which one the request wants.

    Runs ``prompt`` into ``cache`` (a Generation of the same prompt on it then reuses that); costs a few tokens
    when the model is sure, and a short prompt per likely tool when it is not."""
    if not isinstance(grammar, CallGrammar) or len(grammar.open_choice) < 2 or not request.strip():
        return grammar
    tools = grammar.open_choice
    if len(prompt) + ROOM > lm.context:
        return grammar
    direct = _name_scores(lm, cache, prompt, tools)
    names = list(direct)
    p = np.exp(np.array([direct[n] for n in names]) - max(direct.values()))
    if p.max() / p.sum() >= SURE:
        return grammar
    by_name = {t.name: t for t in tools}
    scratch = lm.new_cache()
    channel = {n: _request_score(lm, scratch, by_name[n], request) for n in names}
    return grammar.first(max(names, key=lambda n: direct[n] + channel[n]))


def _encode(lm, text: str) -> list[int]:
    return lm.tokenizer.encode(text, add_special_tokens=False).ids


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _name_scores(lm, cache, prompt: list[int], tools: tuple[Tool, ...]) -> dict[str, float]:
    """log P(name | prompt, the call's opening) of the CANDIDATES likeliest tools; ``cache`` left holding ``prompt``."""
    prefix = prompt + _encode(lm, NAME_PREFIX)
    common = cache.keep_prefix(prefix)
    first = _log_softmax(lm.prefill_tokens(prefix[common:], cache))
    ids = {t.name: _encode(lm, t.name + '"') for t in tools}
    likely = sorted(ids, key=lambda n: -first[ids[n][0]])[:CANDIDATES]
    scores = {}
    for name in likely:
        cancel.check()
        cache.truncate(len(prefix))
        score = first[ids[name][0]]
        if len(ids[name]) > 1:
            rest = _log_softmax(lm.prefill_tokens(ids[name][:-1], cache, all_logits=True))
            score += sum(rest[i, token] for i, token in enumerate(ids[name][1:]))
        scores[name] = float(score)
    cache.truncate(len(prompt))
    return scores


def _request_score(lm, cache, tool: Tool, request: str) -> float:
    """log P(request | "A function: NAME: DESCRIPTION / A request that calls it:")."""
    cancel.check()
    described = f"{tool.name}: {tool.description[:DESCRIPTION_CHARS]}" if tool.description else tool.name
    before = _encode(lm, f"A function: {described}\nA request that calls it:")
    asked = _encode(lm, " " + " ".join(request.split())[:REQUEST_CHARS])
    cache.reset()
    logits = _log_softmax(lm.prefill_tokens(before + asked, cache, all_logits=True))
    return float(sum(logits[len(before) - 1 + i, token] for i, token in enumerate(asked)))
