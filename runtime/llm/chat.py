"""Prompts from the checkpoint's own chat template, single questions and multi-turn chat with KV-cache reuse.

A chat keeps one KV cache for the whole conversation. Each turn renders the full conversation with the template,
and only the tokens after the longest prefix already in the cache are run, so earlier turns are not prefilled
again. When the conversation outgrows the context window the oldest turns are dropped (logged once).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import Iterator, Sized
from dataclasses import replace
from datetime import datetime
from string import Formatter

import numpy as np
from jinja2 import TemplateError, nodes
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from edgemm.runtime.errors import EdgemmError, OptionsError
from edgemm.runtime.limits import check_int, check_text
from edgemm.runtime.llm.choose import first_tool
from edgemm.runtime.llm.constrain import Constraint
from edgemm.runtime.llm.generate import Generation, GenerationOptions
from edgemm.runtime.llm.model import CacheBusyError, ContextError, LanguageModel
from edgemm.runtime.llm.tools import Tool, call_grammar, template_messages

log = logging.getLogger(__name__)

KEEP_CONTROL = {"\n", "\t", "\r"}
# The system prompt of every entry point (``edgemm ask`` / ``chat``, the server, the assistant): see system_prompt.
# Small models answer noticeably more factually with it (SmolLM2-135M: "What is the capital of France?" -> "The
# capital of France is Paris." instead of a list of French words). "Answer briefly and factually" alone made
# Qwen2.5-Coder-0.5B refuse "Tell a story." (greedy, and at seed 1 of temperature 0.7); "friendly", "questions"
# and the story sentence make it write one, its facts and arithmetic about the same (docs/PROMPTS.md).
DEFAULT_SYSTEM = (
    "You are a friendly assistant. Answer questions briefly and factually. Asked for a story, write a short one."
)
# KV caches a chat keeps, each holding the last prompt of one kind: with tools (their text is in the system prompt)
# and without (a photo's answer), so that alternating kinds reuse their shared start instead of running it again.
CACHE_SLOTS = 2
# A partial transcript is judged without these at its end; and the tokens that end a sentence.
UNFINISHED = " .?!,;:…-–—"
SENTENCE_ENDS = (".", "?", "!", ".\n", "?\n", "!\n", ".\n\n", "?\n\n", "!\n\n")
# Bounds on rendering a bundle's chat template (bundles may come from anywhere). A chat template loops over the
# messages; it needs neither millions of items, nor seconds, nor megabytes of text.
MAX_TEMPLATE_RANGE = 10_000  # items in one range()
MAX_TEMPLATE_ITEMS = 10_000  # items a filter goes through one by one in Python (sort, groupby, map, join, ...)
MAX_TEMPLATE_WIDTH = 1_000  # a filter's width, count or separator (center(80), indent(4), join(", "), ...)
MAX_TEMPLATE_OUTPUT = 4_000_000  # characters: far past any context window (about 4 characters a token)
MAX_TEMPLATE_BITS = 1 << 16  # the largest integer a template may compute, in bits
TEMPLATE_SECONDS = 2.0  # rendering time (templates render in milliseconds)


class PromptError(EdgemmError):
    """The prompt text is unusable."""


def system_prompt(chosen: str | None = None) -> str | None:
    """The system message the model gets, the one policy of the CLI, the server and the assistant: ``chosen`` when
    the user or client gave one, DEFAULT_SYSTEM when none was given (None); '' gives none, so the chat template's
    own default applies."""
    if chosen is None:
        return DEFAULT_SYSTEM
    return chosen or None


def with_system(messages: list[dict], chosen: str | None = None) -> list[dict]:
    """``messages`` as the model gets them: kept as they are when they hold a system message of their own (a
    client's), else led by ``system_prompt(chosen)``."""
    if any(m.get("role") == "system" for m in messages):
        return messages
    system = system_prompt(chosen)
    return [{"role": "system", "content": system}, *messages] if system else messages


def clean_text(text: str | bytes) -> str:
    """Valid UTF-8 of at most MAX_TEXT_CHARS characters, control characters (other than newline and tab) removed,
    not empty."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PromptError(f"the prompt is not valid UTF-8 (byte {e.start})") from None
    check_text(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates: undecodable bytes from the command line or a file
        raise PromptError(f"the prompt is not valid UTF-8 (character {e.start})") from None
    text = "".join(c for c in text if c in KEEP_CONTROL or unicodedata.category(c) != "Cc")
    if not text.strip():
        raise PromptError("the prompt is empty")
    return text


class _TimedRange:
    """A template's ``range``: a sequence that checks the render's time budget at every item it yields."""

    def __init__(self, items: range, check):
        self._items, self._check = items, check

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):
        return self._items[index]

    def __iter__(self):
        for item in self._items:
            self._check()
            yield item

    def __reversed__(self):
        return iter(_TimedRange(self._items[::-1], self._check))


def _weight(value, limit: int = MAX_TEMPLATE_OUTPUT) -> int:
    """The characters and items of ``value``, nested lists, tuples and dicts included (about what ``str(value)``
    writes); counting stops past ``limit``."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        value = (*value.keys(), *value.values())
    if not isinstance(value, list | tuple):
        return 0
    total = len(value)
    for item in value:
        if total > limit:
            break
        total += len(item) if isinstance(item, str) else _weight(item, limit - total)
    return total


_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?[a-zA-Z%]")


def _format_size(fmt: str, values, braces: bool) -> float:
    """About the most characters ``fmt % values`` (``braces``: ``fmt.format(*values)``) writes: each field the
    biggest value plus the widths it asks for. A width taken from an argument (``%*d``, ``{:{}}``) is unbounded."""
    if braces:
        specs = [spec or "" for _, field, spec, _ in Formatter().parse(fmt) if field is not None]
    else:
        specs = [width + "." + precision for width, precision in _PERCENT_FIELD.findall(fmt)]
    if any("*" in spec or "{" in spec for spec in specs):
        return math.inf
    widths = sum(int(n) for spec in specs for n in re.findall(r"\d+", spec))
    values = values.values() if isinstance(values, dict) else values if isinstance(values, tuple) else (values,)
    return len(fmt) + len(specs) * max(map(_weight, values), default=0) + widths


def _replaced_size(text: str, old: str, new: str) -> int:
    return len(text) + (text.count(old) if old else len(text) + 1) * len(new)


def _operator_size(operator: str, left, right) -> float:
    """About the size of ``left <operator> right`` (characters or items), before it is built."""
    if operator == "*":
        return max((_weight(seq) * n for seq, n in ((left, right), (right, left)) if isinstance(n, int)), default=0)
    if operator == "+":
        return _weight(left) + _weight(right)
    if operator == "%" and isinstance(left, str):
        return _format_size(left, right, braces=False)
    return 0


def _integer_bits(operator: str, left: int, right: int) -> int:
    """About the bits of ``left * right`` or ``left ** right``."""
    if operator == "**":
        return right * abs(left).bit_length() if abs(left) > 1 else 0
    return left.bit_length() + right.bit_length() if operator == "*" else 0


# Filters that go through their input item by item in Python (a million items would take seconds).
_ITEM_FILTERS = frozenset(
    "batch dictsort groupby items join map max min reject rejectattr select selectattr slice sort sum title unique "
    "urlencode urlize wordwrap xmlattr".split()
)
# Filters that neither copy nor write their input's items: their input's size is not measured.
_CHEAP_FILTERS = frozenset({"attr", "count", "d", "default", "first", "last", "length", "list", "random", "reverse"})
# Filters whose arguments are values (or go to another filter or test), not widths, counts or separators.
_VALUE_FILTERS = frozenset("d default float format int map reject rejectattr round select selectattr truncate".split())
# Filters whose output size follows from their arguments, estimated by _filter_size.
_SIZED_FILTERS = frozenset({"format", "indent", "join", "replace", "sum"})
# Methods that build values as big as a number or a mapping asks (``'x'.center(10**9)``); chat templates need none.
_UNBOUNDED_METHODS = frozenset({"center", "encode", "expandtabs", "ljust", "rjust", "to_bytes", "translate", "zfill"})


def _filter_size(name: str, arguments: dict) -> float:
    """About the size of what the filter ``name`` builds from its named ``arguments``, before it runs."""
    if name == "join":
        return _weight(arguments["value"]) + len(str(arguments["d"])) * len(arguments["value"])
    if name == "replace":
        return _replaced_size(str(arguments["s"]), str(arguments["old"]), str(arguments["new"]))
    if name == "indent":
        text, width = str(arguments["s"]), arguments["width"]
        return len(text) + text.count("\n") * (width if isinstance(width, int) else len(str(width)))
    if name == "format":
        return _format_size(str(arguments["value"]), arguments["kwargs"] or arguments["args"], braces=False)
    if name == "sum" and isinstance(arguments["start"], list | tuple | str):
        return math.inf  # adding up sequences copies them again at every item
    return 0


def _method_size(text: str, name: str, args: tuple, kwargs: dict) -> float:
    """About the size of what the string method ``text.<name>(*args, **kwargs)`` builds, before it runs (``args``
    of ``join`` already a list)."""
    if name == "join":
        return _weight(args[0]) + len(text) * len(args[0])
    if name == "replace" and len(args) > 1 and isinstance(args[0], str) and isinstance(args[1], str):
        return _replaced_size(text, args[0], args[1])
    if name == "format":
        return _format_size(text, (*args, *kwargs.values()), braces=True)
    if name == "format_map":
        return _format_size(text, args[0], braces=True)
    return 0


def _refuse_past(size: float, what: str) -> None:
    if size > MAX_TEMPLATE_OUTPUT:
        raise PromptError(f"the chat template {what} a value past {MAX_TEMPLATE_OUTPUT} characters or items")


def _sized(value):
    """``value``, refused if it is a string or collection past the size bound."""
    _refuse_past(len(value) if isinstance(value, str | list | tuple | dict) else 0, "builds")
    return value


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's sandbox bounded in time and size.

    Time: the render's deadline (per thread) is checked at every call, filter, operator and written chunk, and at
    every item of every loop: :meth:`template` wraps each ``{% for %}`` iterable, and :meth:`call` each recursive
    ``loop(...)``, in :meth:`timed`; ``range`` is capped. No single step runs for long: filters that go through
    their input in Python (sort, groupby, map, ...) take at most MAX_TEMPLATE_ITEMS items, and integers stay
    within MAX_TEMPLATE_BITS. Macros that recurse without end stop with RecursionError.

    Size: operators (``*``, ``+``, ``%``, ``~``), filters, method calls, written values and buffered text (macros,
    ``{% set %}`` blocks) are refused past MAX_TEMPLATE_OUTPUT characters or items, checked before the value is
    built where its size can be told beforehand; width and count arguments are at most MAX_TEMPLATE_WIDTH.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options):
        super().__init__(finalize=self._written, **options)
        self._budget = threading.local()
        self.globals["range"] = self._range
        del self.globals["lipsum"]  # paragraphs of filler text, as many as asked
        del self.filters["pprint"]  # a debugging aid that walks every nested item in Python
        self.filters = {name: self._bounded_filter(name, f) for name, f in self.filters.items()}
        self.policies["json.dumps_function"] = self._dumps
        self.filters["tojson"] = self._tojson

    def template(self, source: str):
        """The compiled template of ``source``, its loops and ``~`` concatenations rewritten to check the bounds."""
        tree = self.parse(source)
        for loop in list(tree.find_all(nodes.For)):
            loop.iter = nodes.Call(nodes.EnvironmentAttribute("timed"), [loop.iter], [], None, None)
        for concat in list(tree.find_all(nodes.Concat)):
            concat.nodes = [nodes.Call(nodes.EnvironmentAttribute("joined"), concat.nodes, [], None, None)]
        return self.from_string(tree)

    def start(self) -> None:
        self._budget.deadline = time.monotonic() + TEMPLATE_SECONDS

    def stop(self) -> None:
        self._budget.deadline = math.inf

    def check(self) -> None:
        if time.monotonic() > getattr(self._budget, "deadline", math.inf):
            raise PromptError(f"the chat template took longer than {TEMPLATE_SECONDS:g} s to render")

    def timed(self, items):
        """The items of a loop, the deadline checked at each."""
        for item in items:
            self.check()
            yield item

    def joined(self, *parts) -> str:
        """``a ~ b ~ ...``"""
        _refuse_past(sum(map(_weight, parts)), "joins")
        return "".join(map(str, parts))

    def concat(self, parts) -> str:  # the text of a macro, a {% set %} block or a recursive loop
        parts = list(parts)
        _refuse_past(sum(map(len, parts)), "writes")
        return "".join(parts)

    def _written(self, value):  # every {{ value }}, before it becomes text
        _refuse_past(_weight(value), "writes")
        return value

    def _range(self, *args) -> _TimedRange:
        items = range(*args)
        if abs(items.stop - items.start) > MAX_TEMPLATE_RANGE * abs(items.step) or len(items) > MAX_TEMPLATE_RANGE:
            raise PromptError(f"the chat template asks for a range of more than {MAX_TEMPLATE_RANGE} items")
        return _TimedRange(items, self.check)

    def _tojson(self, value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        """``tojson`` as transformers defines it for chat templates (keys in their order, no HTML escaping): the
        text the checkpoint was trained on, e.g. Qwen2.5's tool signatures."""
        self.check()
        if indent is not None and (not isinstance(indent, int) or indent > MAX_TEMPLATE_WIDTH):
            raise PromptError(f"the chat template's tojson filter has an indent past {MAX_TEMPLATE_WIDTH}")
        return self._dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def _dumps(self, value, **options) -> str:  # tojson, written chunk by chunk
        chunks, size = [], 0
        for chunk in json.JSONEncoder(**options).iterencode(value):
            size += len(chunk)
            _refuse_past(size, "writes")
            self.check()
            chunks.append(chunk)
        return "".join(chunks)

    def _bounded_filter(self, name: str, function):
        signature = inspect.signature(function) if name in _SIZED_FILTERS else None
        at = 1 if hasattr(function, "jinja_pass_arg") else 0  # the filtered value (after a context or environment)

        @functools.wraps(function)  # keeps jinja_pass_arg
        def bounded(*args, **kwargs):
            self.check()
            if name in _ITEM_FILTERS and isinstance(args[at], Iterator):  # another filter's items, already bounded
                args = (*args[:at], list(args[at]), *args[at + 1 :])
            self._check_filter(name, args[at], (*args[at + 1 :], *kwargs.values()))
            if signature:
                arguments = signature.bind(*args, **kwargs)
                arguments.apply_defaults()
                _refuse_past(_filter_size(name, arguments.arguments), "builds")
            return _sized(function(*args, **kwargs))

        return bounded

    @staticmethod
    def _check_filter(name: str, value, arguments: tuple) -> None:
        if name in _ITEM_FILTERS and isinstance(value, Sized) and len(value) > MAX_TEMPLATE_ITEMS:
            raise PromptError(f"the chat template's {name} filter goes through more than {MAX_TEMPLATE_ITEMS} items")
        if name not in _CHEAP_FILTERS:
            _refuse_past(_weight(value), "filters")
        if name not in _VALUE_FILTERS:
            for argument in arguments:
                if (argument if isinstance(argument, int) else _weight(argument)) > MAX_TEMPLATE_WIDTH:
                    raise PromptError(f"the chat template's {name} filter has an argument past {MAX_TEMPLATE_WIDTH}")

    def is_safe_attribute(self, obj, attr: str, value) -> bool:
        if isinstance(obj, str | int) and attr in _UNBOUNDED_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def call(self, context, obj, /, *args, **kwargs):
        self.check()
        if isinstance(obj, LoopContext) and args:  # loop(items) in a recursive loop: a new loop over items
            args = (self.timed(args[0]), *args[1:])
        method = getattr(obj, "__wrapped__", obj)  # the sandbox hands str.format out wrapped
        text = getattr(method, "__self__", None)
        if isinstance(text, str) and args:
            if method.__name__ == "join":
                args = (list(args[0]), *args[1:])
            _refuse_past(_method_size(text, method.__name__, args, kwargs), "builds")
        return _sized(super().call(context, obj, *args, **kwargs))

    def call_binop(self, context, operator, left, right):
        self.check()
        if isinstance(left, int) and isinstance(right, int):
            if _integer_bits(operator, left, right) > MAX_TEMPLATE_BITS:
                raise PromptError(f"the chat template computes an integer past {MAX_TEMPLATE_BITS} bits")
        else:
            _refuse_past(_operator_size(operator, left, right), "builds")
        return super().call_binop(context, operator, left, right)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class ChatTemplate:
    """Renders messages with the Jinja chat template shipped in the bundle (as transformers does), in a sandbox
    bounded in time and size, and turns them into prompt ids where only the template's own text can hold control
    tokens."""

    def __init__(self, source: str, special: dict):
        env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = self._raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self.template = env.template(source)
        except TemplateError as e:
            raise EdgemmError(f"the bundle's chat template does not parse: {_first_line(e)}") from None
        except (RecursionError, MemoryError, ValueError, OverflowError) as e:
            raise EdgemmError(f"the bundle's chat template cannot be used: {_first_line(e)}") from None
        self.env = env
        self.special = special
        self._plain: tuple[Tokenizer, Tokenizer] | None = None  # (tokenizer, copy that never matches special tokens)

    @staticmethod
    def _raise(message):
        raise PromptError(f"chat template: {message}")

    def render(self, messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None) -> str:
        """The prompt text; ``tools``: OpenAI-form tool specs, for templates that render them."""
        chunks, size = [], 0
        self.env.start()
        try:
            for chunk in self.template.generate(
                messages=messages,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.special.get("bos_token") or "",
                eos_token=self.special.get("eos_token") or "",
            ):
                size += len(chunk)
                if size > MAX_TEMPLATE_OUTPUT:
                    raise PromptError(f"the chat template writes more than {MAX_TEMPLATE_OUTPUT} characters")
                self.env.check()
                chunks.append(chunk)
        except EdgemmError:
            raise
        except (TemplateError, ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as e:
            raise PromptError(f"chat template failed: {_first_line(e)}") from None
        except (RecursionError, MemoryError) as e:
            raise PromptError(f"chat template failed: {type(e).__name__}") from None
        finally:
            self.env.stop()
        return "".join(chunks)

    def encode(
        self, tokenizer: Tokenizer, messages: list[dict], expand=None, tools: list[dict] | None = None
    ) -> list[int]:
        """Prompt ids of ``messages`` (after ``expand(text)``, which may rewrite the template's own text, e.g.
        image tokens). Special tokens are parsed in the template's text only: a message that contains
        ``<|im_end|>`` gets the ids of that text, not the control token. Ordinary messages get exactly the ids of
        the rendered prompt."""
        contents: list[str] = []
        tag = secrets.token_hex(8)
        slot = re.compile(f"\ue000{tag}:(\\d+)\ue001")

        def placeholder(text: str) -> str:
            contents.append(text)
            return f"\ue000{tag}:{len(contents) - 1}\ue001"

        skeleton = self.render([_with_content(m, placeholder) for m in messages], True, tools)
        verbatim = slot.sub(lambda m: contents[int(m.group(1))], skeleton) == self.render(messages, True, tools)
        if expand:
            skeleton = expand(skeleton)
        parts = slot.split(skeleton)  # template text, content index, template text, ...
        special = self._special_ids(tokenizer)
        if verbatim:  # the common case: the template writes each content as it is
            text, spans = "", []
            for i, part in enumerate(parts):
                if i % 2:
                    part = contents[int(part)]
                    spans.append((len(text), len(text) + len(part)))
                text += part
            encoding = tokenizer.encode(text, add_special_tokens=False)
            controls = [span for token, span in zip(encoding.ids, encoding.offsets, strict=True) if token in special]
            if not any(
                a < content_end and b > content_start for a, b in controls for content_start, content_end in spans
            ):
                return encoding.ids
        return self._encode_pieces(tokenizer, parts, contents)

    def _special_ids(self, tokenizer: Tokenizer) -> set[int]:
        return {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}

    def _encode_pieces(self, tokenizer: Tokenizer, parts: list[str], contents: list[str]) -> list[int]:
        """Template text with special tokens parsed, content with none: token boundaries at each content's edges."""
        if self._plain is None or self._plain[0] is not tokenizer:
            plain = Tokenizer.from_str(tokenizer.to_str())
            plain.encode_special_tokens = True
            self._plain = (tokenizer, plain)
        plain = self._plain[1]
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2:
                ids += plain.encode(contents[int(part)], add_special_tokens=False).ids
            elif part:
                ids += tokenizer.encode(part, add_special_tokens=False).ids
        return ids


def _with_content(message: dict, placeholder) -> dict:
    """``message`` with each text content replaced by ``placeholder(text)``."""
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": placeholder(content)}
    if isinstance(content, list):
        items = [
            {**item, "text": placeholder(item["text"])}
            if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str)
            else item
            for item in content
        ]
        return {**message, "content": items}
    return message


def _checked(options):
    if options is not None and not isinstance(options, GenerationOptions):
        raise OptionsError(f"options must be GenerationOptions, not {type(options).__name__}")
    return options


class Chat:
    """A conversation with one model; ``send(text)`` returns a Generation that streams the answer.

    One conversation, one answer at a time: not safe to share between threads. ``send`` or ``reset`` while an
    earlier answer is still being generated (not finished nor closed) raises CacheBusyError, as does starting a
    second answer sent before the first began. Give each thread its own Chat; they can share one LanguageModel.
    """

    def __init__(
        self,
        lm: LanguageModel,
        system: str | None = DEFAULT_SYSTEM,
        options: GenerationOptions | None = None,
        cache_slots: int = CACHE_SLOTS,
        history: int | None = None,
    ):
        """``history``: the tokens earlier turns may take in a prompt (None: as many as the context window leaves
        room for). Past it the oldest turns are dropped down to half of it, so that the shortened conversation is
        run again now and then rather than at every turn; every KV cache then stays within the system prompt, the
        history, the message and the answer."""
        self.lm = lm
        if history is not None:
            check_int(history, "history", 0, lm.context)
        self.history = history
        self.template = ChatTemplate(lm.chat_template, lm.special)
        self.options = _checked(options) or GenerationOptions()
        self.system = clean_text(system) if system else None
        self.turns: list[tuple[str, str]] = []  # (user, assistant) pairs
        self.caches = [lm.new_cache() for _ in range(max(1, cache_slots))]  # a cache grows only as it is used
        self.cache = self.caches[0]  # the one the latest answer ran on
        self._warned_full = False
        self._ends: set[int] | None = None

    def reset(self) -> None:
        self._check_idle()
        self.turns.clear()
        for cache in self.caches:
            cache.reset()

    def _cache_for(self, prompt: list[int]):
        """The cache that holds most of ``prompt``'s start, unless that one would lose most of what it holds while
        another is empty (a prompt of another kind starts a cache of its own)."""
        best = max(self.caches, key=lambda c: (c.shared(prompt), c is not self.cache))
        empty = next((c for c in self.caches if not c.tokens), None)
        if empty is not None and 2 * best.shared(prompt) < len(best.tokens):
            best = empty
        self.cache = best
        return best

    def prepare(self, tools: tuple[Tool, ...] | None = None) -> None:
        """Do now what the next answer would otherwise wait for: compile ``tools``' call grammar (for a 150k-token
        vocabulary about a second, once per model) and run the system prompt, with them, and the conversation so
        far into a cache."""
        self._check_idle()
        if tools:
            Constraint(self.lm, call_grammar(tools))
        self._drop_past_history(None, tools)
        ids = self.encode(self.messages(self.turns, None), tools)
        if len(ids) < 2 or len(ids) >= self.lm.context:  # nothing worth running, or too long: send() will say
            return
        cache = self._cache_for(ids)
        common = cache.keep_prefix(ids)
        self.lm.prefill_tokens(ids[common:], cache)

    def anticipate(self, text: str | bytes, tools: tuple[Tool, ...] | None = None) -> float | None:
        """Run the prompt of ``text`` as the user's message so far (a partial transcript) into a cache: ``send`` of
        the same words (with the same ``tools``) then runs only the few tokens after them. Returns how complete the
        request reads: the model's probability that its words end there (the next token ends the sentence or the
        message), read without the text's own final punctuation, which a transcriber adds to unfinished speech too.
        None when the template marks no end of the message with an end-of-turn token."""
        self._check_idle()
        question = clean_text(text).rstrip(UNFINISHED)
        prompt = self._fit(question, self.options, tools if tools else None)
        end = self._user_end(prompt)
        if not question or end is None:
            return None
        cache = self._cache_for(prompt[:end])
        common = cache.keep_prefix(prompt[:end])
        logits = self.lm.prefill_tokens(prompt[common:end], cache).astype(np.float64)
        p = np.exp(logits - logits.max())
        return float(p[sorted(self._sentence_ends() | {prompt[end]})].sum() / p.sum())

    def read_ahead(
        self,
        text: str | bytes,
        tools: tuple[Tool, ...] | None = None,
        max_tokens: int | None = None,
        answer: bool = False,
    ) -> bool:
        """Run the prompt of ``text`` as the user's message into a cache, at most ``max_tokens`` more of it per call:
        ``send`` of a message that starts with ``text`` then runs only what follows. ``answer``: the whole prompt,
        the answer's header too, so that ``send(text, tools=tools)`` samples its first token at once. Returns
        whether all of it is in (also when there is nothing to run: a template that marks no end of the message,
        a prompt too long)."""
        self._check_idle()
        try:
            prompt = self._fit(clean_text(text), self.options, tools if tools else None)
        except ContextError:  # send() will say
            return True
        if not answer:
            end = self._user_end(prompt)
            if end is None:
                return True
            prompt = prompt[:end]
        cache = self._cache_for(prompt)
        if cache.shared(prompt) >= len(prompt) and (not answer or cache.next_logits is not None):
            return True
        common = cache.keep_prefix(prompt)
        todo = prompt[common:] if max_tokens is None else prompt[common : common + max(1, max_tokens)]
        logits = self.lm.prefill_tokens(todo, cache)
        done = common + len(todo) >= len(prompt)
        if answer and done:
            cache.next_logits = logits
        return done

    def _user_end(self, prompt: list[int]) -> int | None:
        """Where the user's message ends in ``prompt``: its end-of-turn token, which only the answer's header
        follows; None when the template marks no such end."""
        ends = [i for i, t in enumerate(prompt) if t in self.lm.eos_ids]
        return ends[-1] if ends and ends[-1] >= 1 else None

    def _sentence_ends(self) -> set[int]:
        """The model's tokens that end a sentence (".", "?", "!", with or without a line break after them)."""
        if self._ends is None:
            encoded = [self.lm.tokenizer.encode(s, add_special_tokens=False).ids for s in SENTENCE_ENDS]
            self._ends = {ids[0] for ids in encoded if len(ids) == 1}
        return self._ends

    def messages(self, turns: list[tuple[str, str]], question: str | None) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        for user, assistant in turns:
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        if question is not None:
            msgs.append({"role": "user", "content": question})
        return msgs

    def encode(self, messages: list[dict], tools: tuple[Tool, ...] | None = None) -> list[int]:
        messages, specs = template_messages(messages, tools, self.lm.chat_template)
        return self.template.encode(self.lm.tokenizer, messages, tools=specs)

    def _fit(self, question: str, options: GenerationOptions, tools=None) -> list[int]:
        """Prompt ids for the conversation + question, dropping oldest turns past the history or to leave room for
        an answer."""
        self._drop_past_history(question, tools)
        room = self.lm.context
        reserve = min(options.max_new_tokens, room // 4)
        turns = list(self.turns)
        while True:
            ids = self.encode(self.messages(turns, question), tools)
            if len(ids) + reserve <= room or (not turns and len(ids) < room):
                break
            if not turns:
                raise ContextError(
                    f"the prompt is {len(ids)} tokens; the context window is {room} (use a shorter question)"
                )
            turns.pop(0)
        dropped = len(self.turns) - len(turns)
        if dropped:
            if not self._warned_full:
                log.warning("the conversation is longer than the context window: dropping the oldest turns")
                self._warned_full = True
            log.debug("dropped %d oldest turns", dropped)
            self.turns = turns
        return ids

    def _drop_past_history(self, question: str | None, tools=None) -> None:
        """When the turns take more than ``history`` tokens of the prompt, keep the latest that take half of it."""
        if self.history is None or not self.turns:
            return
        bare = len(self.encode(self.messages([], question), tools))
        turns, limit = list(self.turns), self.history
        while turns and len(self.encode(self.messages(turns, question), tools)) - bare > limit:
            turns.pop(0)
            limit = self.history // 2
        if len(turns) < len(self.turns):
            log.debug("history: dropped the %d oldest turns", len(self.turns) - len(turns))
            self.turns = turns

    def remember(self, question: str, answer: str) -> None:
        """Add a turn answered without the model (e.g. by a skill): later answers see it like any other."""
        self._check_idle()
        self.turns.append((clean_text(question), answer))

    def forget_last(self) -> None:
        """Drop the latest turn (e.g. a tool call whose result is answered as a turn of its own)."""
        self._check_idle()
        if self.turns:
            self.turns.pop()

    def _check_idle(self) -> None:
        if any(cache.busy for cache in self.caches):
            raise CacheBusyError(
                "this chat is still generating an answer: finish or close() it first (one Chat per thread)"
            )

    def send(
        self,
        text: str | bytes,
        options: GenerationOptions | None = None,
        tools: tuple[Tool, ...] | None = None,
        tool_choice: str = "auto",
    ) -> Generation:
        """The answer to ``text``. ``tools`` (see :mod:`.tools`): the model may call them ("auto"), must
        ("required"), must call the one named, or ignores them ("none"); its calls, in the answer's text, always
        validate (:func:`.tools.split_calls` separates them)."""
        self._check_idle()
        question = clean_text(text)
        options = _checked(options) or self.options
        if tools and tool_choice != "none":
            options = replace(options, grammar=call_grammar(tools, tool_choice))
        else:
            tools = None
        prompt = self._fit(question, options, tools)
        self._cache_for(prompt)
        if tools:
            options = replace(options, grammar=first_tool(self.lm, self.cache, prompt, options.grammar, question))

        def remember(gen: Generation) -> None:
            self.turns.append((question, gen.text))

        return Generation(self.lm, self.cache, prompt, options, on_finish=remember)


def ask(
    lm: LanguageModel,
    question: str | bytes,
    options: GenerationOptions | None = None,
    system: str | None = DEFAULT_SYSTEM,
) -> Generation:
    """One question, no memory: a streaming Generation."""
    return Chat(lm, system=system, options=options).send(question)
