"""Tool calls and constrained decoding in the library: the checkpoint's own tool format (parity with transformers),
grammars that hold even for a random model, streamed calls, hostile schemas."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from edgemm.bench.toolcalls import TOOLS
from edgemm.runtime.llm import Chat, Generation, GenerationOptions, LanguageModel
from edgemm.runtime.llm import tools as tools_module
from edgemm.runtime.llm.chat import ChatTemplate
from edgemm.runtime.llm.choose import first_tool
from edgemm.runtime.llm.constrain import MAX_SCHEMA_DEPTH, Grammar, GrammarError
from edgemm.runtime.llm.tools import (
    MAX_CALLS,
    CallStream,
    ToolCall,
    ToolError,
    call_grammar,
    parse_tools,
    split_calls,
    template_messages,
)

jsonschema = pytest.importorskip("jsonschema")
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def random_lm(tiny_llms):
    """A tiny random Qwen2: whatever it writes freely is noise, so anything valid comes from the grammar."""
    return LanguageModel.load(tiny_llms["qwen2"][1]["fp32"], threads=1)


def _conversation():
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    return [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
        {"role": "user", "content": "And is that warm?"},
    ]


def test_qwen_tool_prompt_is_the_one_transformers_renders(llm_bundle):
    """Tools, earlier calls and results rendered by the bundle's own (Qwen2.5) template exactly as transformers
    renders them: the format the checkpoint was trained on."""
    chat_template_utils = pytest.importorskip("transformers.utils.chat_template_utils")
    lm = LanguageModel.load(llm_bundle, threads=1)
    if "tools" not in lm.chat_template:
        pytest.skip("the default LLM's template has no tool format")
    messages, specs = template_messages(_conversation(), parse_tools(TOOLS), lm.chat_template)
    ours = ChatTemplate(lm.chat_template, lm.special).render(messages, True, specs)
    reference = chat_template_utils.render_jinja_template(
        [messages], tools=specs, chat_template=lm.chat_template, add_generation_prompt=True
    )[0][0]
    assert ours == reference
    assert '{"type": "function", "function": {"name": "get_weather"' in ours  # keys in their own order
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in ours


def test_fallback_format_for_templates_without_tools():
    """SmolLM2's template has no tool format: the instructions go into the system message, calls into the
    assistant's text, results into a user message."""
    messages, specs = template_messages(_conversation(), parse_tools(TOOLS[:1]), "{{ messages }}")
    assert specs is None
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith("Be brief.\n\n")
    assert '"name": "get_weather"' in messages[0]["content"] and "<tool_call>" in messages[0]["content"]
    assert messages[2] == {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    }
    assert messages[3] == {"role": "user", "content": '<tool_response>\n{"temperature": 21}\n</tool_response>'}
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "user"]


def _free(lm, options: GenerationOptions) -> Generation:
    """An answer after a short prompt (the tools' prompt would not fit the random model's 512 positions; its words
    do not matter to a random model)."""
    return Generation(lm, lm.new_cache(), lm.tokenizer.encode("Hi").ids, options)


@pytest.mark.parametrize("choice", ["required", "set_light", "auto"])
def test_a_random_model_writes_only_valid_calls(random_lm, choice):
    """Sampled at temperature 1 from a random model, every answer under the tool grammar is text or calls that
    parse and validate against their function's schema."""
    grammar, calls_seen = call_grammar(parse_tools(TOOLS), choice), 0
    for seed in range(12):
        answer = _free(random_lm, GenerationOptions(max_new_tokens=400, temperature=1.0, seed=seed, grammar=grammar))
        text = answer.result()
        content, calls = split_calls(text)
        if answer.finish_reason == "length":
            continue  # cut by max_new_tokens: OpenAI returns such an answer as it is, with finish_reason "length"
        if choice != "auto":
            assert calls and content == "", text
        assert len(calls) <= MAX_CALLS
        for call in calls:
            assert choice in ("auto", "required") or call.name == choice
            jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
        calls_seen += len(calls)
    assert choice == "auto" or calls_seen >= 2  # random strings rarely end: most answers run to max_new_tokens


def test_a_first_call_held_to_one_tool(random_lm):
    """``first``: the first call names the tool chosen for it; later (parallel) calls may name any tool."""
    grammar = call_grammar(parse_tools(TOOLS), "required").first("set_light")
    answered = 0
    for seed in range(12):
        answer = _free(random_lm, GenerationOptions(max_new_tokens=400, temperature=1.0, seed=seed, grammar=grammar))
        calls = split_calls(answer.result())[1]
        if answer.finish_reason == "length":
            continue
        assert calls[0].name == "set_light"
        answered += 1
    assert answered >= 2
    with pytest.raises(ToolError, match="no tool named 'lamp'"):
        call_grammar(parse_tools(TOOLS), "auto", first="lamp")


def test_an_unsure_choice_of_tool_is_checked_against_the_request(llm_bundle):
    """The desktop model alone names set_timer for a message about 3 pm; scored the other way round (how likely
    is the request after each tool's description), the first call goes to send_message. A sure choice is left
    alone, and so is a tool_choice that names the function."""
    lm = LanguageModel.load(llm_bundle, threads=2)
    tools, chat = parse_tools(TOOLS), Chat(lm)
    grammar = call_grammar(tools, "required")
    unsure = chat.encode(chat.messages([], "Message Tom: the meeting moved to 3 pm."), tools)
    held = first_tool(lm, lm.new_cache(), unsure, grammar, "Message Tom: the meeting moved to 3 pm.")
    assert held is not grammar and "calls: call_2 " in held.lark  # send_message: the third tool
    answer = Chat(lm).send("Message Tom: the meeting moved to 3 pm.", tools=tools, tool_choice="required")
    call = split_calls(answer.result())[1][0]
    assert call.name == "send_message" and json.loads(call.arguments)["to"] == "Tom"
    sure = chat.encode(chat.messages([], "What's the weather in Paris?"), tools)
    assert first_tool(lm, lm.new_cache(), sure, grammar, "What's the weather in Paris?") is grammar
    named = call_grammar(tools, "set_timer")
    assert first_tool(lm, lm.new_cache(), unsure, named, "Message Tom: the meeting moved to 3 pm.") is named


def test_response_format_schema_holds_for_a_random_model(random_lm):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    finished = 0
    for seed in range(10):
        options = GenerationOptions(max_new_tokens=200, temperature=1.0, seed=seed, grammar=Grammar.json_schema(schema))
        answer = _free(random_lm, options)
        text = answer.result()
        if answer.finish_reason != "length":
            jsonschema.validate(json.loads(text), schema)
            finished += 1
    assert finished >= 5


def test_streamed_calls_reassemble_to_the_whole_answer():
    text = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "set_timer", "arguments": {"minutes": 5, "seconds": 0}}\n</tool_call>'
    )
    for size in (1, 3, 7, len(text)):
        stream, items = CallStream(), []
        for i in range(0, len(text), size):
            items += stream.feed(text[i : i + size])
        items += stream.finish()
        whole = split_calls(text)[1]
        assert [(c.name, c.arguments) for c in items if isinstance(c, ToolCall)] == [
            (c.name, c.arguments) for c in whole
        ]
        assert not [i for i in items if isinstance(i, str)]
    stream = CallStream()
    assert stream.feed("<tool") == [] and stream.feed("s are") == ["<tools are"]  # text that only began like a call


@pytest.mark.parametrize(
    "schema, message",
    [
        ({"type": "wat"}, "cannot be used: .*wat"),
        ({"$ref": "#/$defs/missing"}, "cannot be used"),
        ({"$defs": {"n": {"$ref": "#/$defs/n"}}, "$ref": "#/$defs/n"}, "cannot be used"),
        ("not a schema", "must be a JSON schema object"),
    ],
)
def test_unusable_schemas_are_one_line(random_lm, schema, message):
    with pytest.raises(GrammarError, match=message) as error:
        _free(random_lm, GenerationOptions(grammar=Grammar.json_schema(schema, "the schema")))
    assert "\n" not in str(error.value)


def test_hostile_schemas_are_bounded(random_lm):
    deep = {"type": "string"}
    for _ in range(1000):
        deep = {"type": "object", "properties": {"a": deep}, "required": ["a"]}
    with pytest.raises(GrammarError, match=f"more than {MAX_SCHEMA_DEPTH} levels"):
        Grammar.json_schema(deep)
    with pytest.raises(GrammarError, match="over .* characters"):
        Grammar.json_schema({"enum": ["x" * 100] * 10_000})
    # Usable, if odd: a recursive schema, a 10,000-value enum of short values, unknown keywords.
    recursive = {"$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"}
    for schema in (recursive, {"enum": [f"v{i}" for i in range(10_000)]}, {"type": "object", "x-unknown": 1}):
        start = time.perf_counter()
        options = GenerationOptions(max_new_tokens=30, temperature=1.0, seed=1, grammar=Grammar.json_schema(schema))
        _free(random_lm, options).result()
        assert time.perf_counter() - start < 20


def test_bad_tool_lists_name_the_field():
    with pytest.raises(ToolError, match="non-empty list") as e:
        parse_tools({"type": "function"})
    assert e.value.param == "tools"
    with pytest.raises(ToolError, match="name must be") as e:
        parse_tools([{"type": "function", "function": {"name": "a b"}}])
    assert e.value.param == "tools[0].function.name"
    with pytest.raises(ToolError, match="two tools"):
        parse_tools([{"type": "function", "function": {"name": "a"}}] * 2)
    with pytest.raises(ToolError, match="object schema"):
        parse_tools([{"type": "function", "function": {"name": "a", "parameters": {"type": "string"}}}])
    with pytest.raises(ToolError, match="not among the tools"):
        call_grammar(parse_tools(TOOLS), "launch_rocket")


def test_no_grammar_costs_nothing(random_lm):
    """Without tools or a schema no constraint is made: the answer is the same as before, token for token."""
    options = GenerationOptions(max_new_tokens=20, temperature=1.0, seed=3)
    first = Chat(random_lm, options=options).send("Hello")
    assert first.constraint is None
    again = Chat(random_lm, options=options).send("Hello", tools=parse_tools(TOOLS), tool_choice="none")
    assert again.constraint is None
    assert np.array_equal(first.result() and first.tokens, again.result() and again.tokens)


def test_prompts_with_and_without_tools_keep_a_cache_each(random_lm, monkeypatch):
    """A chat that alternates questions with tools (their text in the system prompt) and without (a photo's answer)
    runs only the new turns each time, not the tools' text again; what it answers is what a fresh chat answers."""
    monkeypatch.setattr(tools_module, "FALLBACK", "Tools:\n{tools}")  # the tiny model's 512-token window
    light = {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]}
    tools = parse_tools([{"type": "function", "function": {"name": "light", "parameters": light}}])
    options = GenerationOptions(max_new_tokens=4)
    chat = Chat(random_lm, options=options)
    chat.prepare(tools)
    system = len(chat.encode(chat.messages([], None), tools))
    first = chat.send("Turn on the kitchen light.", tools=tools)
    first.result()
    assert first.stats.prefilled_tokens < first.stats.prompt_tokens - system + 8  # the system prompt was ready
    plain = chat.send("And what is this photo?")  # no tools: a cache of its own
    plain.result()
    again = chat.send("Turn it off.", tools=tools)
    again.result()
    assert again.cache is first.cache and plain.cache is not first.cache
    assert again.stats.prefilled_tokens < again.stats.prompt_tokens // 3
    fresh = Chat(random_lm, options=options)
    fresh.turns = list(chat.turns[:-1])
    assert fresh.send("Turn it off.", tools=tools).result() == again.text
    chat.reset()
    assert all(cache.length == 0 for cache in chat.caches)


def test_preparing_a_chat_refuses_nothing(random_lm):
    """prepare() with no tools, or with tools whose text fills the context, does what it can and raises nothing:
    the question itself gets the usual error."""
    chat = Chat(random_lm, system=None)
    chat.prepare()
    huge = parse_tools([{**TOOLS[0], "function": {**TOOLS[0]["function"], "description": "word " * 700}}])
    chat.prepare(huge)
    assert all(cache.length < random_lm.context for cache in chat.caches)
