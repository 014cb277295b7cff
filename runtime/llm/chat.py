"""Prompts from the checkpoint's own chat template, single questions and multi-turn chat with KV-cache reuse.

A chat keeps one KV cache for the whole conversation. Each turn renders the full conversation with the template,
and only the tokens after the longest prefix already in the cache are run, so earlier turns are not prefilled
again. When the conversation outgrows the context window the oldest turns are dropped (logged once).
"""

from __future__ import annotations

import logging
import unicodedata
from datetime import datetime

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.llm.generate import Generation, GenerationOptions
from edgemm.runtime.llm.model import ContextError, LanguageModel

log = logging.getLogger(__name__)

KEEP_CONTROL = {"\n", "\t", "\r"}
# The assistant's default instructions. Small models answer noticeably more factually with them (SmolLM2-135M:
# "What is the capital of France?" -> "The capital of France is Paris." instead of a list of French words).
# An empty string keeps the chat template's own default system message.
DEFAULT_SYSTEM = "You are a helpful assistant. Answer briefly and factually."


class PromptError(EdgemmError):
    """The prompt text is unusable."""


def clean_text(text: str | bytes) -> str:
    """Valid UTF-8, control characters (other than newline and tab) removed, not empty."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PromptError(f"the prompt is not valid UTF-8 (byte {e.start})") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates: undecodable bytes from the command line or a file
        raise PromptError(f"the prompt is not valid UTF-8 (character {e.start})") from None
    text = "".join(c for c in text if c in KEEP_CONTROL or unicodedata.category(c) != "Cc")
    if not text.strip():
        raise PromptError("the prompt is empty")
    return text


class ChatTemplate:
    """Renders messages with the Jinja chat template shipped in the bundle (as transformers does)."""

    def __init__(self, source: str, special: dict):
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = self._raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self.template = env.from_string(source)
        except TemplateError as e:
            raise EdgemmError(f"the bundle's chat template does not parse: {e}") from None
        self.special = special

    @staticmethod
    def _raise(message):
        raise PromptError(f"chat template: {message}")

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        try:
            return self.template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.special.get("bos_token") or "",
                eos_token=self.special.get("eos_token") or "",
            )
        except TemplateError as e:
            raise PromptError(f"chat template failed: {e}") from None


class Chat:
    """A conversation with one model; ``send(text)`` returns a Generation that streams the answer."""

    def __init__(
        self, lm: LanguageModel, system: str | None = DEFAULT_SYSTEM, options: GenerationOptions | None = None
    ):
        self.lm = lm
        self.template = ChatTemplate(lm.chat_template, lm.special)
        self.options = options or GenerationOptions()
        self.system = clean_text(system) if system else None
        self.turns: list[tuple[str, str]] = []  # (user, assistant) pairs
        self.cache = lm.new_cache()
        self._warned_full = False

    def reset(self) -> None:
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
        text = self.template.render(messages, add_generation_prompt=True)
        return self.lm.tokenizer.encode(text, add_special_tokens=False).ids

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

    def send(self, text: str | bytes, options: GenerationOptions | None = None) -> Generation:
        question = clean_text(text)
        options = options or self.options
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
