"""Tool calls: OpenAI-style function tools offered to the model, its calls constrained to the tools' schemas.

The model writes a call as Qwen2.5's chat template asks (the Hermes format)::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A chat template that takes ``tools`` (Qwen2.5) renders them, earlier calls and their results itself. For one that
does not (SmolLM2), the same instructions go into the system message (:data:`FALLBACK`), earlier calls are written
into the assistant's text and results are sent as user messages in ``<tool_response>`` tags: see docs/TOOLS.md.

The answer is generated under :func:`call_grammar`, so a call always parses and its arguments validate against the
tool's schema; :func:`split_calls` then separates text and calls.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

from edgemm.runtime.errors import OptionsError
from edgemm.runtime.llm.constrain import Grammar, GrammarError, check_schema, json_rule, lark_string

MAX_TOOLS = 128
MAX_CALLS = 8  # calls in one answer (parallel_tool_calls): a small model may otherwise repeat one call to the end
MAX_DESCRIPTION = 4_000  # characters of a tool's description
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
CALL_OPEN, CALL_CLOSE = "<tool_call>\n", "\n</tool_call>"
CHOICES = ("none", "auto", "required")
TEXT_RULE = "TEXT: /(?s:.+)/ & ~/(?s:\\s*<tool_call.*)/"  # any text that does not start with a call
FALLBACK = (
    "You can call functions to help answer. Their signatures, in JSON, are within <tools></tools> tags:\n"
    "<tools>\n{tools}\n</tools>\n\n"
    "To call a function, answer with only a JSON object of its name and arguments within <tool_call></tool_call> "
    'tags:\n<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>\n'
    "The results come back within <tool_response></tool_response> tags."
)
_CALL = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)


class ToolError(OptionsError):
    """A tool definition, a tool choice or a tool message that cannot be used; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments

    def spec(self) -> dict:
        """OpenAI's form, which chat templates render."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text of the arguments object
    id: str = ""

    def spec(self) -> dict:
        """OpenAI's form (a message's ``tool_calls`` item)."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def parse_tools(value, param: str = "tools") -> tuple[Tool, ...]:
    """OpenAI's ``tools`` list, checked; a bad one raises ToolError naming the field."""
    if not isinstance(value, list) or not value:
        raise ToolError("'tools' must be a non-empty list of function tools", param)
    if len(value) > MAX_TOOLS:
        raise ToolError(f"at most {MAX_TOOLS} tools", param)
    tools, names = [], set()
    for i, item in enumerate(value):
        where = f"{param}[{i}]"
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(item, dict) or item.get("type") != "function" or not isinstance(function, dict):
            raise ToolError('each tool must be {"type": "function", "function": {...}}', where)
        name = function.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ToolError("a function's name must be 1 to 64 letters, digits, '_' or '-'", f"{where}.function.name")
        if name in names:
            raise ToolError(f"two tools are named {name!r}", f"{where}.function.name")
        description = function.get("description", "")
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            raise ToolError(f"a description must be a text of at most {MAX_DESCRIPTION} characters", where)
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        try:
            check_schema(parameters, "the function's parameters")
        except GrammarError as e:
            raise ToolError(str(e), f"{where}.function.parameters") from None
        if parameters.get("type", "object") != "object":
            raise ToolError("a function's parameters must be an object schema", f"{where}.function.parameters")
        names.add(name)
        tools.append(Tool(name, description, parameters))
    return tuple(tools)


def _call_schema(tool: Tool) -> dict:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


class CallGrammar(Grammar):
    """A grammar made by :func:`call_grammar`, which remembers how: :meth:`first` narrows its first call."""

    def __init__(self, lark: str, tools: tuple[Tool, ...], choice: str, parallel: bool, text: str | None):
        super().__init__(lark, "the tools", "tools")
        self.tools, self.choice, self.parallel, self.text = tools, choice, parallel, text

    @property
    def open_choice(self) -> tuple[Tool, ...]:
        """The tools a first call may name (none when tool_choice names one)."""
        return self.tools if self.choice in ("auto", "required") else ()

    def first(self, name: str) -> CallGrammar:
        """The same answers, except that a first call must name ``name``."""
        return call_grammar(self.tools, self.choice, self.parallel, self.text, first=name)


def call_grammar(
    tools: tuple[Tool, ...],
    choice: str = "auto",
    parallel: bool = True,
    text: str | None = None,
    first: str | None = None,
) -> CallGrammar:
    """The answers allowed: ``choice`` "auto": text, or calls; "required": calls; a tool's name: one call of it.
    ``parallel``: one or more calls (else exactly one). ``text``: a Lark item the text must match instead of any
    text (a JSON schema's, for a response_format). ``first``: a tool's name that the first call must have."""
    offered = tools
    if choice not in ("auto", "required"):
        tools = tuple(t for t in tools if t.name == choice)
        if not tools:
            raise ToolError(f"tool_choice names {choice!r}, which is not among the tools", "tool_choice")
        parallel = False
    rules = [
        f"call_{i}: {lark_string(CALL_OPEN)} {json_rule(_call_schema(t), f'the parameters of {t.name}')} "
        f"{lark_string(CALL_CLOSE)}"
        for i, t in enumerate(tools)
    ]
    first_call = "call"
    if first is not None:
        first_call = next((f"call_{i}" for i, t in enumerate(tools) if t.name == first), None)
        if first_call is None:
            raise ToolError(f"no tool named {first!r} among the tools", "tools")
    calls = first_call + (f' ("\\n" call){{0,{MAX_CALLS - 1}}}' if parallel else "")
    if choice != "auto":
        start = "start: calls"
    elif text is not None:
        start = f"start: {text} | calls"
    else:
        start = f"start: TEXT | calls\n{TEXT_RULE}"
    call = "call: " + " | ".join(f"call_{i}" for i in range(len(tools)))
    lark = "\n".join([start, f"calls: {calls}", call, *rules]) + "\n"
    return CallGrammar(lark, offered, choice, parallel, text)


def text_grammar() -> Grammar:
    """Text that is not a call (tool_choice "none" with tools in the conversation: the model may not call)."""
    return Grammar(f"start: TEXT\n{TEXT_RULE}\n", "the answer", "tool_choice")


def split_calls(text: str) -> tuple[str, list[ToolCall]]:
    """The text outside the calls, and the calls (new ids), of an answer generated under call_grammar."""
    calls = []
    for match in _CALL.finditer(text):
        try:
            call = json.loads(match.group(1))
            arguments = json.dumps(call["arguments"], ensure_ascii=False)
            calls.append(ToolCall(call["name"], arguments, "call_" + secrets.token_hex(12)))
        except (ValueError, KeyError, TypeError):  # not from the grammar (e.g. cut by max_tokens): left as text
            continue
    content = _CALL.sub("", text).strip() if calls else text
    return content, calls


class CallStream:
    """Splits an answer streamed under call_grammar into text pieces (passed on at once, unless they could be the
    start of a call) and whole calls."""

    def __init__(self):
        self.buffer, self.calls = "", None  # calls: None while undecided, then whether the answer is calls

    def feed(self, piece: str) -> list[str | ToolCall]:
        self.buffer += piece
        if self.calls is None:
            head, opening = self.buffer.lstrip(), CALL_OPEN.strip()
            if not head or opening.startswith(head):
                return []
            self.calls = head.startswith(opening)
        if not self.calls:
            out, self.buffer = self.buffer, ""
            return [out]
        out: list[str | ToolCall] = []
        while (match := _CALL.search(self.buffer)) is not None:
            out += split_calls(match.group(0))[1]
            self.buffer = self.buffer[match.end() :]
        return out

    def finish(self) -> list[str | ToolCall]:
        """What is left: text, or a call cut short (by max_tokens), which is passed on as text."""
        out, self.buffer = self.buffer, ""
        return [out.strip() if self.calls else out] if out.strip() else []


def takes_tools(template_source: str) -> bool:
    """Whether a chat template renders ``tools`` itself."""
    return re.search(r"\btools\b", template_source) is not None


def fallback_messages(messages: list[dict], tools: tuple[Tool, ...] | None) -> list[dict]:
    """``messages`` for a chat template without tool support: tool instructions in the system message, earlier
    calls in the assistant's text, results as user messages."""
    out: list[dict] = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            content = "\n".join([content] * bool(content) + [format_call(c) for c in message["tool_calls"]])
            out.append({"role": "assistant", "content": content})
        elif role == "tool":
            response = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1].get("tool_results"):
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + response}
            else:
                out.append({"role": "user", "content": response, "tool_results": True})
        else:
            out.append({"role": role, "content": content})
    out = [{"role": m["role"], "content": m["content"]} for m in out]
    if tools:
        instructions = FALLBACK.format(tools="\n".join(json.dumps(t.spec(), ensure_ascii=False) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + instructions}
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out


def format_call(call: dict) -> str:
    """An earlier call (OpenAI's form, or {"name", "arguments"}) as the model writes it."""
    return CALL_OPEN + json.dumps(_parsed_call(call), ensure_ascii=False) + CALL_CLOSE


def template_messages(messages: list[dict], tools: tuple[Tool, ...] | None, template_source: str):
    """``(messages, tool specs)`` ready for a chat template: OpenAI-form messages (tool calls and ``tool`` results
    included) in the template's own tool format, or in :data:`FALLBACK`'s when it has none."""
    if not takes_tools(template_source):
        return fallback_messages(messages, tools), None
    out = []
    for message in messages:
        if message.get("tool_calls"):
            calls = [_parsed_call(c) for c in message["tool_calls"]]
            message = {**message, "content": message.get("content") or "", "tool_calls": calls}
        out.append(message)
    return out, [t.spec() for t in tools] if tools else None


def _parsed_call(call: dict) -> dict:
    """A call with its arguments as an object (templates write them with ``tojson``)."""
    function = call.get("function", call)
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        arguments = json.loads(arguments)
    return {"name": function["name"], "arguments": arguments}
