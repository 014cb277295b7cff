"""Prompts from the checkpoint's own chat template, single questions and multi-turn chat with KV-cache reuse.

A chat keeps one KV cache for the whole conversation. Each turn renders the full conversation with the template,
and only the tokens after the longest prefix already in the cache are run, so earlier turns are not prefilled
again. When the conversation outgrows the context window the oldest turns are dropped (logged once).
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import threading
import time
import unicodedata
from datetime import datetime

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from edgemm.runtime.errors import EdgemmError, OptionsError
from edgemm.runtime.limits import check_text
from edgemm.runtime.llm.generate import Generation, GenerationOptions
from edgemm.runtime.llm.model import CacheBusyError, ContextError, LanguageModel

log = logging.getLogger(__name__)

KEEP_CONTROL = {"\n", "\t", "\r"}
# The assistant's default instructions. Small models answer noticeably more factually with them (SmolLM2-135M:
# "What is the capital of France?" -> "The capital of France is Paris." instead of a list of French words).
# An empty string keeps the chat template's own default system message.
DEFAULT_SYSTEM = "You are a helpful assistant. Answer briefly and factually."
# Bounds on rendering a bundle's chat template (bundles may come from anywhere). A chat template loops over the
# messages; it needs neither millions of items, nor seconds, nor megabytes of text.
MAX_TEMPLATE_RANGE = 10_000  # items in one range()
MAX_TEMPLATE_OUTPUT = 4_000_000  # characters: far past any context window (about 4 characters a token)
MAX_TEMPLATE_EXPONENT = 4096  # the largest integer power a template may compute
TEMPLATE_SECONDS = 2.0  # rendering time (templates render in milliseconds)


class PromptError(EdgemmError):
    """The prompt text is unusable."""


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


def _too_big(operator: str, left, right) -> bool:
    """Whether ``left <operator> right`` would build a value past the template's output budget."""
    sized = (str, list, tuple)
    if operator == "*":
        return any(
            isinstance(seq, sized) and isinstance(n, int) and len(seq) * n > MAX_TEMPLATE_OUTPUT
            for seq, n in ((left, right), (right, left))
        )
    if operator == "+":
        return isinstance(left, sized) and isinstance(right, sized) and len(left) + len(right) > MAX_TEMPLATE_OUTPUT
    if operator == "**":
        return isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > MAX_TEMPLATE_EXPONENT
    return False


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's sandbox plus bounds on time and size: ``range`` is capped, operators that build big values are
    checked, and every call, operator and range item checks the render's deadline (per thread)."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def __init__(self, **options):
        super().__init__(**options)
        self._budget = threading.local()
        self.globals["range"] = self._range

    def start(self) -> None:
        self._budget.deadline = time.monotonic() + TEMPLATE_SECONDS

    def stop(self) -> None:
        self._budget.deadline = math.inf

    def check(self) -> None:
        if time.monotonic() > getattr(self._budget, "deadline", math.inf):
            raise PromptError(f"the chat template took longer than {TEMPLATE_SECONDS:g} s to render")

    def _range(self, *args) -> _TimedRange:
        items = range(*args)
        if abs(items.stop - items.start) > MAX_TEMPLATE_RANGE * abs(items.step) or len(items) > MAX_TEMPLATE_RANGE:
            raise PromptError(f"the chat template asks for a range of more than {MAX_TEMPLATE_RANGE} items")
        return _TimedRange(items, self.check)

    def call(self, context, obj, /, *args, **kwargs):
        self.check()
        return super().call(context, obj, *args, **kwargs)

    def call_binop(self, context, operator, left, right):
        self.check()
        if _too_big(operator, left, right):
            raise PromptError(f"the chat template builds a value past {MAX_TEMPLATE_OUTPUT} characters")
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
            self.template = env.from_string(source)
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

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        chunks, size = [], 0
        self.env.start()
        try:
            for chunk in self.template.generate(
                messages=messages,
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

    def encode(self, tokenizer: Tokenizer, messages: list[dict], expand=None) -> list[int]:
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

        skeleton = self.render([_with_content(m, placeholder) for m in messages], add_generation_prompt=True)
        verbatim = slot.sub(lambda m: contents[int(m.group(1))], skeleton) == self.render(messages)
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
        self, lm: LanguageModel, system: str | None = DEFAULT_SYSTEM, options: GenerationOptions | None = None
    ):
        self.lm = lm
        self.template = ChatTemplate(lm.chat_template, lm.special)
        self.options = _checked(options) or GenerationOptions()
        self.system = clean_text(system) if system else None
        self.turns: list[tuple[str, str]] = []  # (user, assistant) pairs
        self.cache = lm.new_cache()
        self._warned_full = False

    def reset(self) -> None:
        self._check_idle()
        self.turns.clear()
        self.cache.reset()

    def messages(self, turns: list[tuple[str, str]], question: str | None) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        for user, assistant in turns:
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        if question is not None:
            msgs.append({"role": "user", "content": question})
        return msgs

    def encode(self, messages: list[dict]) -> list[int]:
        return self.template.encode(self.lm.tokenizer, messages)

    def _fit(self, question: str, options: GenerationOptions) -> list[int]:
        """Prompt ids for the conversation + question, dropping oldest turns to leave room for an answer."""
        room = self.lm.context
        reserve = min(options.max_new_tokens, room // 4)
        turns = list(self.turns)
        while True:
            ids = self.encode(self.messages(turns, question))
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

    def _check_idle(self) -> None:
        if self.cache.busy:
            raise CacheBusyError(
                "this chat is still generating an answer: finish or close() it first (one Chat per thread)"
            )

    def send(self, text: str | bytes, options: GenerationOptions | None = None) -> Generation:
        self._check_idle()
        question = clean_text(text)
        options = _checked(options) or self.options
        prompt = self._fit(question, options)

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
