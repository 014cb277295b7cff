"""`edgemm serve` with tools and structured output, driven by the real `openai` client: every returned call parses
and validates (Qwen2.5 and SmolLM2), streamed calls reassemble to the whole one, tool results round-trip,
response_format json_schema validates, hostile schemas and tool messages get a 400 naming the field."""

from __future__ import annotations

import json

import pytest

from edgemm.bench.serve import ServerProcess
from edgemm.bench.toolcalls import CASES, TOOLS, valid
from edgemm.runtime.bundle import default_bundle, models_dir

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pytestmark = pytest.mark.slow

PI_LLM = "smollm2-135m-instruct-int4"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "city": {"type": "string", "maxLength": 40},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
    },
    "required": ["name", "age", "city", "hobbies"],
    "additionalProperties": False,
}
PEOPLE = ["a retired teacher", "a young chef", "a famous painter", "a football player", "a nurse"]
SUBJECTS = ["from Paris", "from Tokyo", "from Lagos", "from Lima", "from Oslo", "who loves music", "who builds boats",
            "who grows apples", "who writes poems", "who studies stars"]  # fmt: skip


def _server(model: str | None):
    path = models_dir() / model if model else default_bundle("llm")
    if not (path / "manifest.json").exists():
        pytest.skip(f"{path} missing: run `make setup`")
    return ServerProcess("--model", str(path), "--no-speech", "--no-vision", "--no-tts")


@pytest.fixture(scope="module", params=["desktop", "pi"])
def client(request):
    with _server(None if request.param == "desktop" else PI_LLM) as server:
        yield openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=300)


def _ask(client, text, **extra):
    return client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": text}], max_tokens=120, tools=TOOLS, **extra
    )


def test_every_returned_call_validates(client):
    """Over the whole tool-calling set: each call names a tool and its arguments validate against its schema. (An
    answer cut by max_tokens inside its first call returns no call, as OpenAI's; it must be rare.)"""
    answered = 0
    for question, _, _ in CASES:
        choice = _ask(client, question, tool_choice="required").choices[0]
        if choice.finish_reason == "length" and not choice.message.tool_calls:
            continue
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, question
        for call in choice.message.tool_calls:
            assert call.type == "function" and call.id.startswith("call_")
            assert valid(call.function.name, call.function.arguments), (question, call)
        answered += 1
    assert answered >= 0.9 * len(CASES)


def test_auto_named_and_none(client):
    named = _ask(client, "Is it cold in Oslo?", tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (call,) = named.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and "oslo" in json.loads(call.function.arguments)["city"].lower()
    free = _ask(client, "What is the capital of France?", tool_choice="none").choices[0]
    assert free.message.tool_calls is None and free.message.content and free.finish_reason == "stop"
    auto = _ask(client, "Turn on the kitchen light.").choices[0]  # text or calls; if calls, valid ones
    for call in auto.message.tool_calls or []:
        assert valid(call.function.name, call.function.arguments)


def test_streamed_calls_reassemble_to_the_whole_call(client):
    for question in ("Set a timer for 5 minutes.", "Convert 100 dollars to euros."):
        whole = _ask(client, question, tool_choice="required", parallel_tool_calls=False).choices[0].message
        parts, finish = {}, None
        for chunk in _ask(client, question, tool_choice="required", parallel_tool_calls=False, stream=True):
            for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
                part = parts.setdefault(delta.index, {"name": "", "arguments": ""})
                part["name"] += delta.function.name or ""
                part["arguments"] += delta.function.arguments or ""
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        assert finish == "tool_calls"
        assert [(p["name"], json.loads(p["arguments"])) for p in parts.values()] == [
            (c.function.name, json.loads(c.function.arguments)) for c in whole.tool_calls
        ]


def test_tool_results_round_trip(client):
    """The client runs the call and sends the result back in a ``tool`` message: the model answers from it."""
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    first = client.chat.completions.create(
        model="any", messages=messages, tools=TOOLS, tool_choice="required", max_tokens=80
    )
    call = first.choices[0].message.tool_calls[0]
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 31, "sky": "sunny"})},
    ]
    answer = client.chat.completions.create(model="any", messages=messages, tools=TOOLS, max_tokens=60)
    message = answer.choices[0].message
    assert message.content or message.tool_calls  # the desktop model says "31"; the pi one may call again
    if message.content and call.function.name == "get_weather" and "qwen" in answer.model:
        assert "31" in message.content


def test_response_format_json_schema_validates(client):
    """50 prompts: every answer is JSON valid against the schema (the pi model included; max_tokens leaves room
    for its longest: 40 characters of katakana are about 120 byte tokens)."""
    schema = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for i in range(50):
        prompt = f"Invent {PEOPLE[i % 5]} {SUBJECTS[i // 5]}. Answer in JSON."
        reply = client.chat.completions.create(
            model="any", messages=[{"role": "user", "content": prompt}], response_format=schema, max_tokens=600
        )
        assert reply.choices[0].finish_reason == "stop", prompt
        jsonschema.validate(json.loads(reply.choices[0].message.content), PERSON)
    reply = client.chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": "List two colours as JSON."}],
        response_format={"type": "json_object"},
        max_tokens=300,
    )
    if reply.choices[0].finish_reason == "stop":  # an object without a schema may go on past max_tokens
        assert isinstance(json.loads(reply.choices[0].message.content), dict)


def _error(client, **body) -> openai.BadRequestError:
    body = {"model": "any", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, **body}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**body)
    return e.value


def test_bad_tools_and_schemas_are_400_naming_the_field(client):
    deep = {"type": "string"}
    for _ in range(250):  # 750 levels of JSON: as deep as the client's own encoder goes (the library test: 1,000)
        deep = {"type": "object", "properties": {"a": deep}}
    cases = [
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "d", "schema": deep}}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "wat"}}}},
         "response_format"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "1", "content": {"a": 1}}]},
         "messages[1].content"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
          "function": {"name": "f", "arguments": "not json"}}]}, {"role": "user", "content": "x"}]},
         "messages[0].tool_calls[0].function.arguments"),
    ]  # fmt: skip
    for body, param in cases:
        error = _error(client, **body)
        assert error.body["param"] == param, (body, error.body)
        assert "\n" not in error.body["message"]
    recursive = {"$defs": {"n": {"$ref": "#/$defs/n"}}, "$ref": "#/$defs/n"}
    error = _error(client, response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": recursive}})
    assert error.body["param"] == "response_format"
    # The server goes on: a normal question after all of that.
    reply = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=20
    )
    assert reply.choices[0].message.content
