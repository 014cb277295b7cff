"""Constrained decoding: a grammar masks the logits at every step, so the answer always parses.

Grammars (a JSON schema, or a Lark grammar that embeds JSON schemas) are compiled by llguidance, which computes the
set of allowed next tokens for the model's own tokenizer in tens of microseconds. A :class:`Grammar` is checked once
and shared; each generation runs its own :class:`Constraint`. Without a grammar nothing of this runs.
"""

from __future__ import annotations

import json
import threading
import weakref

import numpy as np

from edgemm.runtime.errors import EdgemmError

MAX_SCHEMA_CHARS = 256_000  # a schema's JSON text: far past any real one (a 10,000-value enum is about 100,000)
MAX_SCHEMA_DEPTH = 64  # nesting of objects and lists in a schema
# Separators of the JSON the model writes: those of the chat templates' own ``tojson`` (Python's json.dumps).
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(EdgemmError):
    """A schema or grammar that cannot be used to constrain an answer; ``param``: the request field it came from."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _depth(value, limit: int) -> int:
    """Nesting depth of a JSON value, counting stops past ``limit`` (no recursion: a hostile value may be deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def check_schema(schema, what: str) -> str:
    """``schema`` as JSON text, refused (GrammarError naming ``what``) when it is not a JSON object, too big or too
    deep."""
    if not isinstance(schema, dict):
        raise GrammarError(f"{what} must be a JSON schema object")
    if _depth(schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
        raise GrammarError(f"{what} is nested more than {MAX_SCHEMA_DEPTH} levels deep")
    try:
        text = json.dumps(schema, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise GrammarError(f"{what} is not valid JSON: {e}") from None
    if len(text) > MAX_SCHEMA_CHARS:
        raise GrammarError(f"{what} is over {MAX_SCHEMA_CHARS} characters")
    return text


def _first_line(message: str) -> str:
    return (message.strip().splitlines() or ["invalid"])[0]


class Grammar:
    """A grammar in llguidance's Lark dialect (JSON schemas inline as ``%json{...}``), immutable: share it freely.
    ``check(lm)`` compiles it against a model's tokenizer and raises GrammarError with the compiler's reason."""

    def __init__(self, lark: str, what: str = "the grammar", param: str | None = None):
        self.lark, self.what, self.param = lark, what, param
        self._checked: weakref.WeakSet = weakref.WeakSet()

    @classmethod
    def json_schema(cls, schema: dict, what: str = "the schema", param: str | None = None) -> Grammar:
        """Any JSON value valid against ``schema``, written with JSON_STYLE separators."""
        try:
            return cls(f"start: {json_rule(schema, what)}\n", what, param)
        except GrammarError as e:
            raise GrammarError(str(e), param) from None

    def check(self, lm) -> None:
        if lm in self._checked:
            return
        import llguidance

        error = llguidance.LLMatcher.validate_grammar(self.serialized(), tokenizer_of(lm))
        if error:
            raise GrammarError(f"{self.what} cannot be used: {_first_line(error)}", self.param)
        self._checked.add(lm)

    def serialized(self) -> str:
        return json.dumps({"grammars": [{"lark_grammar": self.lark}]})


def json_rule(schema: dict, what: str) -> str:
    """A Lark item matching JSON valid against ``schema``."""
    check_schema(schema, what)
    schema = {**schema, "x-guidance": {**JSON_STYLE, **(schema.get("x-guidance") or {})}}
    return "%json " + check_schema(schema, what)


def lark_string(text: str) -> str:
    """A Lark string literal of ``text``."""
    return json.dumps(text)


_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_tokenizers_lock = threading.Lock()


def tokenizer_of(lm):
    """llguidance's view of ``lm``'s tokenizer (built once per model: about a second for a 150k vocabulary), with
    its vocabulary slices unless the machine profile leaves them out (runtime/profiles.py)."""
    with _tokenizers_lock:
        table = _tokenizers.get(lm)
        if table is None:
            import llguidance

            table = llguidance.LLTokenizer(
                lm.tokenizer.to_str(),
                n_vocab=lm.config.vocab_size,
                eos_token=sorted(lm.eos_ids),
                slices=None if lm.grammar_slices else [],  # None: llguidance's default slices
            )
            _tokenizers[lm] = table
        return table


class Constraint:
    """One generation's position in a grammar: ``mask(logits)`` before each token is picked, ``advance(token)``
    after. Not shared between threads."""

    def __init__(self, lm, grammar: Grammar):
        import llguidance

        grammar.check(lm)
        table = tokenizer_of(lm)
        self.matcher = llguidance.LLMatcher(table, grammar.serialized(), log_level=0)
        if self.matcher.is_error():
            raise GrammarError(f"{grammar.what} cannot be used: {_first_line(self.matcher.get_error())}", grammar.param)
        self.bits = np.zeros((table.vocab_size + 31) // 32, np.int32)
        self.vocab, self.what, self.param = lm.config.vocab_size, grammar.what, grammar.param
        self._allowed = self._compute()  # the first step's, now: a grammar that fails at once fails here

    def _compute(self) -> np.ndarray:
        self.matcher.unsafe_compute_mask_ptr(self.bits.ctypes.data, self.bits.nbytes)
        if self.matcher.is_error():
            raise GrammarError(f"{self.what} cannot be used: {_first_line(self.matcher.get_error())}", self.param)
        return np.unpackbits(self.bits.view(np.uint8), bitorder="little")[: self.vocab].view(bool)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of ``logits`` with every token the grammar forbids here at -inf."""
        allowed, self._allowed = (self._allowed if self._allowed is not None else self._compute()), None
        return np.where(allowed, logits[: self.vocab], np.float32(-np.inf))

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise GrammarError(f"the answer left its grammar: {_first_line(self.matcher.get_error())}", self.param)

    @property
    def finished(self) -> bool:
        """The grammar allows nothing more (only the end of the answer)."""
        return self.matcher.is_stopped()
