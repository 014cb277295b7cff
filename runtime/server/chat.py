"""``POST /v1/chat/completions``: OpenAI's chat completions, streamed or whole, with tools and images."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from edgemm.runtime.llm import ContextError, Generation
from edgemm.runtime.llm.chat import with_system
from edgemm.runtime.llm.choose import first_tool
from edgemm.runtime.llm.tools import CallStream, split_calls, template_messages
from edgemm.runtime.server import openai
from edgemm.runtime.server.http import api_error, owner_of, read_json, sse
from edgemm.runtime.server.openai import bad
from edgemm.runtime.server.workers import Channel

# What the llm worker sends while it answers: Started, then a Piece per text piece, then Finished.


@dataclass(frozen=True)
class Started:
    model: str  # the name the answer is given under


@dataclass(frozen=True)
class Piece:
    text: str


@dataclass(frozen=True)
class Finished:
    reason: str  # the generation's finish reason
    usage: dict  # OpenAI's usage object


def _generation(server, req: openai.ChatRequest, owner: str) -> tuple[Generation, str]:
    """Start the answer to a chat request of client ``owner`` (on the llm worker's thread)."""
    m = server.models
    if req.images:
        answer = m.images.ask(req.question, req.images, req.options, system=req.system)
        return answer.generation, m.images.model_name
    messages, specs = template_messages(with_system(req.messages), req.tools, m.lm.chat_template)
    prompt = server.template.encode(m.lm.tokenizer, messages, tools=specs)
    if len(prompt) >= m.lm.context:
        raise ContextError(
            f"the messages are {len(prompt)} tokens; the context window is {m.lm.context} (send fewer or shorter)"
        )
    cache, options = m.cache_pool.take(prompt, owner), req.options
    if req.tools and req.messages[-1]["role"] == "user":
        options = replace(options, grammar=first_tool(m.lm, cache, prompt, options.grammar, req.question))
    return Generation(m.lm, cache, prompt, options), m.lm.name


async def chat_completions(server, request: Request) -> Response:
    deadline = time.monotonic() + server.config.timeout
    req = await read_json(request, openai.chat_request, server.models.lm.context)
    if req.images and server.models.images is None:
        raise bad("this server answers no image questions (it was started without a vision model)", "messages")

    owner = owner_of(request, req.cache_key)

    def job(channel: Channel):
        generation, model = _generation(server, req, owner)
        channel.on_cancel(generation.close)
        try:
            channel.put(Started(model))
            for piece in generation:
                channel.put(Piece(piece))
        finally:  # a reader that left stops the answer here: its KV cache is free for the next request at once
            generation.close()
        stats = generation.stats
        cached = stats.prompt_tokens - stats.prefilled_tokens
        channel.put(Finished(generation.finish_reason, openai.usage(stats.prompt_tokens, stats.new_tokens, cached)))

    channel = server.start("llm", job)
    started = await server.next(channel, request, deadline)
    cid = openai.completion_id()
    if req.stream:
        return StreamingResponse(
            _chat_events(server, channel, request, cid, started.model, req, deadline),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    text, finished = "", None
    while True:
        try:
            item = await server.next(channel, request, deadline)
        except StopAsyncIteration:
            break
        if isinstance(item, Piece):
            text += item.text
        else:
            finished = item
    text, calls = split_calls(text) if req.tools else (text, [])
    reason, usage = (finished.reason, finished.usage) if finished else (None, None)
    return JSONResponse(openai.completion(cid, started.model, text, reason, usage, calls))


async def _chat_events(server, channel, request, cid, model, req: openai.ChatRequest, deadline):
    usage, calls = None, CallStream() if req.tools else None
    index = 0  # of the next tool call

    def deltas(items):  # text pieces and whole calls as OpenAI's deltas
        nonlocal index
        for item in items:
            if isinstance(item, str):
                yield {"content": item}
            else:
                yield from openai.call_deltas(index, item)
                index += 1

    try:
        yield sse(openai.chunk(cid, model, {"role": "assistant", "content": ""}))
        while True:
            try:
                item = await server.next(channel, request, deadline)
            except StopAsyncIteration:
                break
            except Exception as e:  # a timeout, or the model failed mid-answer: OpenAI's error object ends it
                yield sse(api_error(e).body())
                break
            if isinstance(item, Piece):
                for delta in deltas(calls.feed(item.text) if calls else [item.text]):
                    yield sse(openai.chunk(cid, model, delta))
            else:
                usage = item.usage
                for delta in deltas(calls.finish() if calls else []):
                    yield sse(openai.chunk(cid, model, delta))
                finish = "tool_calls" if index else openai.FINISH.get(item.reason, "stop")
                yield sse(openai.chunk(cid, model, {}, finish))
        if req.include_usage and usage is not None:
            yield sse(openai.chunk(cid, model, {}, usage_=usage))
        yield "data: [DONE]\n\n"
    finally:  # also when the client disconnects: the generation stops after its current token
        channel.cancel()


ROUTES = [("/v1/chat/completions", chat_completions, ["POST"])]
