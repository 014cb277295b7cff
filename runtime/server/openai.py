"""OpenAI's HTTP formats: request checks, responses, streamed chunks and errors.

Requests are checked field by field; a bad one raises :class:`APIError` naming the field (``param``), which the app
turns into OpenAI's error JSON ``{"error": {"message", "type", "param", "code"}}``. Unknown fields are ignored, as
OpenAI-compatible servers do, so clients written for OpenAI work unchanged, except those that would change the
answer's form (``logprobs``, ``logit_bias``...: UNSUPPORTED), which get a 400 naming them rather than an answer that
ignores them; ``model`` is accepted whatever it names and the response says which model answered. ``tools`` and
``response_format`` are honoured by constrained decoding (runtime/llm/tools.py, constrain.py): calls are returned,
never run.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
from dataclasses import dataclass, field

from edgemm.runtime.errors import EdgemmError, OptionsError
from edgemm.runtime.limits import check_float, check_int
from edgemm.runtime.llm import GenerationOptions
from edgemm.runtime.llm.chat import clean_text
from edgemm.runtime.llm.constrain import Grammar, GrammarError, json_rule
from edgemm.runtime.llm.generate import MAX_STOP_CHARS
from edgemm.runtime.llm.tools import Tool, ToolError, call_grammar, parse_tools, text_grammar
from edgemm.runtime.speech import subtitles

MAX_IMAGE_BYTES = 20 << 20  # one image in a chat request (decoded)
MAX_AUDIO_BYTES = 25 << 20  # one uploaded audio file (OpenAI's limit)
MAX_SPEECH_INPUT = 4096  # characters of text to speak (OpenAI's limit)
MAX_STOP = 4
MAX_CACHE_KEY = 256
MAX_CALLS = 128  # tool calls in one earlier assistant message
# Fields that change the answer's form, with the values this server honours (anything else: 400 naming the field).
UNSUPPORTED = {
    "functions": ([],),  # the deprecated form of tools
    "function_call": ("none", "auto"),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "audio": (),
    "modalities": (["text"],),
    "prediction": (),
}
DESCRIBE = "What is in this image?"
ROLES = {"system", "developer", "user", "assistant", "tool"}
TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
SPEECH_FORMATS = ("wav", "pcm", "flac")  # mp3, opus and aac would need an encoder this install does not have
DATA_URI = re.compile(r"data:(image/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)


class APIError(Exception):
    """An HTTP error in OpenAI's format."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def number(body: dict, name: str, low: float, high: float, default=None, integer: bool = False):
    """Field ``name`` of a JSON body (``default`` when absent), range-checked by the library's own checks; a bad
    value is a 400 naming the field. Integer fields take JSON integers only."""
    value = body.get(name)
    if value is None:
        return default
    try:
        if integer:
            if isinstance(value, bool) or not isinstance(value, int):
                raise OptionsError(f"{name} must be an integer, not {value!r}")
            return check_int(value, name, low, high)
        return check_float(value, name, low, high)
    except OptionsError as e:
        raise bad(str(e), name) from None


# ---- chat completions ----


@dataclass
class ChatRequest:
    messages: list[dict]  # role + text content, ready for the chat template
    options: GenerationOptions
    stream: bool = False
    include_usage: bool = False
    images: list[bytes] = field(default_factory=list)  # the images of the latest user message that has any
    question: str = ""  # the last user message's text (the question about the images)
    system: str | None = None
    cache_key: str | None = None  # prompt_cache_key: the client's name for its conversations' KV caches
    tools: tuple[Tool, ...] | None = None  # described to the model (with tool_choice "none": never called)


def _image_bytes(url, param: str) -> bytes:
    if not isinstance(url, str):
        raise bad("image_url.url must be a text (a data: URI)", param)
    if url.startswith(("http://", "https://")):
        raise bad(
            "this server is offline: it cannot fetch image URLs; send the image itself as a data: URI "
            "(data:image/jpeg;base64,...)",
            param,
            "image_url_not_supported",
        )
    match = DATA_URI.match(url)
    if not match:
        raise bad("image_url.url must be a base64 data: URI (data:image/png;base64,...)", param)
    encoded = url[match.end() :]
    if len(encoded) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise APIError(413, f"an image is over {MAX_IMAGE_BYTES >> 20} MB", param=param, code="image_too_large")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise bad("image_url.url is not valid base64", param) from None


def _content(message: dict, index: int) -> tuple[str, list[bytes]]:
    """A message's text and images (content as a text, or a list of text and image_url parts)."""
    param = f"messages[{index}].content"
    content = message.get("content")
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise bad("content must be a text or a list of content parts", param)
    texts, images = [], []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise bad("each content part must be an object with a 'type'", where)
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad("a text part needs 'text'", where)
            texts.append(part["text"])
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            images.append(_image_bytes(url, f"{where}.image_url"))
        else:
            raise bad(f"content parts of type {kind!r} are not supported (use text and image_url)", where)
    return "\n".join(texts), images


def _refuse_unsupported(body: dict) -> None:
    """A 400 naming a field that would change what the answer is, which this server does not do yet (rather than
    answering as if it had been honoured)."""
    for name, allowed in UNSUPPORTED.items():
        value = body.get(name)
        if value is not None and value not in allowed:
            raise bad(f"'{name}' is not supported by this server", name, "unsupported_parameter")


def chat_request(body, max_tokens_limit: int) -> ChatRequest:
    """Check a /v1/chat/completions body. ``max_tokens_limit``: the context window (an answer never runs longer)."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    _refuse_unsupported(body)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad("'messages' must be a non-empty list", "messages")
    messages, images, question, system = [], [], "", None
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise bad("each message must be an object with 'role' and 'content'", f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise bad(
                f"role {role!r} is not supported (use system, developer, user, assistant or tool)",
                f"messages[{i}].role",
            )
        role = "system" if role == "developer" else role
        if role == "tool" and not isinstance(message.get("content"), str | list):
            raise bad("a tool message's content must be a text (the tool's result)", f"messages[{i}].content")
        text, found = _content(message, i)
        if found and not text.strip():
            text = DESCRIBE  # an image sent without a question
        calls = _tool_calls(message, i) if role == "assistant" else []
        try:
            text = clean_text(text) if text or not calls else ""
        except EdgemmError as e:
            raise bad(str(e), f"messages[{i}].content") from None
        if found and role != "user":
            raise bad("only user messages may hold images", f"messages[{i}].content")
        if found:
            images = found
        if role == "user":
            question = text
        if role == "system":
            system = text
        messages.append({"role": role, "content": text, **({"tool_calls": calls} if calls else {})})
    if messages[-1]["role"] == "assistant":
        raise bad("the last message must not be the assistant's (nothing to answer)", "messages")

    max_tokens = number(body, "max_completion_tokens", 1, 1 << 20, None, integer=True)
    if max_tokens is None:
        max_tokens = number(body, "max_tokens", 1, 1 << 20, None, integer=True)
    n = number(body, "n", 1, 128, 1, integer=True)
    if n != 1:
        raise bad("only n=1 is supported", "n")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list)
        or len(stop) > MAX_STOP
        or any(not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS for s in stop)
    ):
        raise bad(
            f"'stop' must be a text or a list of up to {MAX_STOP} non-empty texts of at most {MAX_STOP_CHARS} "
            "characters",
            "stop",
        )
    cache_key = body.get("prompt_cache_key")
    if cache_key is not None and (not isinstance(cache_key, str) or not 0 < len(cache_key) <= MAX_CACHE_KEY):
        raise bad(f"'prompt_cache_key' must be a text of 1 to {MAX_CACHE_KEY} characters", "prompt_cache_key")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("'stream' must be true or false", "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise bad("'stream_options' must be an object", "stream_options")
    seed = number(body, "seed", -(2**63), 2**63 - 1, None, integer=True)
    tools, grammar = _constraint(body)
    if images and grammar is not None:
        raise bad("tools and response_format are not supported with images", "tools" if tools else "response_format")
    options = GenerationOptions(
        max_new_tokens=min(max_tokens or max_tokens_limit, max_tokens_limit),
        # Greedy unless asked: OpenAI's default (1.0) makes a small model ramble.
        temperature=number(body, "temperature", 0.0, 2.0, 0.0),
        top_p=number(body, "top_p", 0.0, 1.0, 1.0) or 1.0,
        seed=None if seed is None else seed % (2**63),
        stop=tuple(stop or ()),
        grammar=grammar,
    )
    return ChatRequest(
        messages,
        options,
        stream=stream,
        include_usage=bool(stream_options.get("include_usage")),
        images=images,
        question=question,
        system=system,
        cache_key=cache_key,
        tools=tools,
    )


def _tool_calls(message: dict, index: int) -> list[dict]:
    """An assistant message's earlier calls, checked (their arguments must be a JSON object's text)."""
    calls = message.get("tool_calls")
    if calls is None:
        return []
    param = f"messages[{index}].tool_calls"
    if not isinstance(calls, list) or len(calls) > MAX_CALLS:
        raise bad(f"'tool_calls' must be a list of at most {MAX_CALLS} calls", param)
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        arguments = function.get("arguments") if isinstance(function, dict) else None
        if not isinstance(name, str) or not isinstance(arguments, str):
            raise bad(
                'each call must be {"id", "type": "function", "function": {"name", "arguments"}}', f"{param}[{j}]"
            )
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise bad("a call's arguments must be a JSON object's text", f"{param}[{j}].function.arguments")
        out.append(
            {"id": str(call.get("id", "")), "type": "function", "function": {"name": name, "arguments": arguments}}
        )
    return out


def _tool_choice(value, tools: tuple[Tool, ...] | None) -> str:
    if value is None:
        return "auto"
    if isinstance(value, str) and value in ("none", "auto", "required"):
        choice = value
    elif isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("function"), dict):
        choice = value["function"].get("name")
        if not isinstance(choice, str) or not tools or all(t.name != choice for t in tools):
            raise bad("tool_choice names a function that is not among the tools", "tool_choice")
    else:
        raise bad('tool_choice must be "none", "auto", "required" or {"type": "function", ...}', "tool_choice")
    if choice != "none" and not tools:
        raise bad(f"tool_choice {choice!r} needs tools", "tool_choice")
    return choice


def _response_schema(value) -> dict | None:
    """The JSON schema that response_format asks for (None: free text)."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise bad("response_format.json_schema must be an object with a 'schema'", "response_format")
        return spec.get("schema", {})
    raise bad('response_format type must be "text", "json_object" or "json_schema"', "response_format")


def _constraint(body: dict) -> tuple[tuple[Tool, ...] | None, Grammar | None]:
    """The tools offered and the grammar the answer must follow (tools and response_format)."""
    try:
        tools = parse_tools(body["tools"]) if body.get("tools") is not None else None
    except ToolError as e:
        raise bad(str(e), e.param) from None
    choice = _tool_choice(body.get("tool_choice"), tools)
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise bad("'parallel_tool_calls' must be true or false", "parallel_tool_calls")
    schema = _response_schema(body.get("response_format"))
    try:
        if tools and choice != "none":
            text = json_rule(schema, "response_format's schema") if schema is not None else None
            return tools, call_grammar(tools, choice, parallel, text)
        if schema is not None:
            return tools, Grammar.json_schema(schema, "response_format's schema", "response_format")
        if tools:  # "none": described, never called
            return tools, text_grammar()
    except GrammarError as e:
        raise bad(str(e), "response_format") from None
    except ToolError as e:
        raise bad(str(e), e.param) from None
    return None, None


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


FINISH = {
    "calls": "tool_calls",
    "eos": "stop",
    "stop": "stop",
    "length": "length",
    "context": "length",
    "interrupted": "stop",
}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """Token counts; ``cached_tokens``: prompt tokens that came from a kept KV cache (not run again)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def completion(cid: str, model: str, text: str, finish: str | None, usage_: dict, calls=()) -> dict:
    """The whole answer; ``calls``: the tool calls in it (ToolCall)."""
    message = {"role": "assistant", "content": text if text or not calls else None, "refusal": None}
    if calls:
        message["tool_calls"], finish = [c.spec() for c in calls], "calls"
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": FINISH.get(finish or "", "stop"),
            }
        ],
        "usage": usage_,
    }


def chunk(cid: str, model: str, delta: dict, finish: str | None = None, usage_: dict | None = None) -> dict:
    out = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage_ is not None:
        out["choices"], out["usage"] = [], usage_
    return out


def call_deltas(index: int, call) -> list[dict]:
    """A tool call as streamed deltas: its id and name, then its arguments."""
    head = {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
    return [{"tool_calls": [head]}, {"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]}]


# ---- audio ----


def transcription_body(result, response_format: str, task: str) -> tuple[str | dict, str]:
    """The body and its media type for ``response_format``."""
    if response_format == "json":
        return {"text": result.text}, "application/json"
    if response_format == "text":
        return result.text + "\n", "text/plain; charset=utf-8"
    if response_format == "srt":
        return subtitles.srt(result.segments), "application/x-subrip; charset=utf-8"
    if response_format == "vtt":
        return subtitles.vtt(result.segments), "text/vtt; charset=utf-8"
    segments = [
        {
            "id": i,
            "seek": 0,
            "start": s.start,
            "end": s.end,
            "text": s.text,
            "tokens": list(s.tokens),
            "temperature": s.temperature,
            "avg_logprob": s.avg_logprob,
            "compression_ratio": s.compression_ratio,
            "no_speech_prob": s.no_speech_prob,
        }
        for i, s in enumerate(result.segments)
    ]
    return {
        "task": task,
        "language": result.language or "en",
        "duration": result.duration,
        "text": result.text,
        "segments": segments,
    }, "application/json"
