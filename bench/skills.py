"""``edgemm bench skills``: what each route to a grounded answer costs (docs/BENCHMARKS.md, "Skills and tools").

- matcher: the first load (hassil, Home Assistant's intents, edgemm's templates) in a fresh process, then the median
  time of one ``Skills.match`` over phrasings that match and ones that must not;
- skill answer: an assistant's whole typed turn answered by a skill ("What time is it?", "What is 17 times 23?");
- tool call: an assistant turn the LLM answers by calling ``look`` ("Is the door open?", a photo as the camera):
  the prompt's tokens and the seconds until the call is complete (before the image question runs);
- constrained decoding: one model's decode speed answering freely and under a JSON schema, alternated in one run,
  and the grammar's own time per token (mask + advance, replayed on the constrained answers' tokens).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgemm.bench.commands import RunsOptions

PHRASES = [
    "What time is it?", "what's the time", "What's the date today?", "What day is it today?",
    "What day of the week was July 4, 1776?", "What day is tomorrow?", "Set a timer for five minutes.",
    "Set a timer for two and a half hours.", "Set a timer for a minute and 30 seconds.",
    "Set a pasta timer for 10 minutes.", "Wake me up at 7:30 a.m.", "How much time is left on my timer?",
    "Cancel the pasta timer.", "What is 17 times 23?", "What's 1,234 plus 5,678?", "17 * 23",
    "What is the square root of 144?", "How many centimeters in 3 inches?", "Convert 5 miles to kilometers.",
    "What is 100 degrees Fahrenheit in Celsius?", "Who are you?", "What can you do?", "Which model are you?",
    "What do you see?", "Read the sign.", "What am I holding?",
]  # fmt: skip
NOT_SKILLS = [
    "What is the capital of France?", "Tell me a story about a timer.", "How are you?",
    "What time zone is Paris in?", "Is this a good idea?", "What does that mean?",
    "How long does it take to boil an egg?", "What is the meaning of life?", "Can you explain this to me?",
    "Why is the sky blue and what makes sunsets red in the evening?",
]  # fmt: skip
LOAD = "import time; t = time.perf_counter(); from edgemm.runtime.skills import matcher; matcher.load(); print(time.perf_counter() - t)"
FREE = "Describe a busy street market in the morning."
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer"},
        "city": {"type": "string", "maxLength": 40},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
        "biography": {"type": "string"},
    },
    "required": ["name", "age", "city", "hobbies", "biography"],
}
STRUCTURED = "Invent a person who lives by the sea, with a long biography. Answer in JSON."


def first_load() -> float:
    """Seconds to import the skills and build the matcher, in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, check=True, timeout=120)
    return float(out.stdout.split()[-1])


def match_times(phrases: list[str], repeat: int) -> list[float]:
    """Each phrase's median seconds for one match, after one warm-up match."""
    from edgemm.runtime.skills import Skills

    skills = Skills()
    skills.warm_up()
    medians = []
    for phrase in phrases:
        skills.match(phrase)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            skills.match(phrase)
            times.append(time.perf_counter() - start)
        medians.append(statistics.median(times))
    return medians


def _turn_seconds(assistant, question: str, camera=None) -> float:
    from edgemm.runtime.assistant import TurnEnd

    start = time.perf_counter()
    for event in assistant.respond(question, camera=camera):
        if isinstance(event, TurnEnd):
            return time.perf_counter() - start
    raise RuntimeError("no answer")


def tool_call(lm, runs: int) -> dict:
    """An assistant turn routed to ``look`` by the LLM: prompt tokens and seconds until the call is complete."""
    from edgemm.runtime.llm import Chat
    from edgemm.runtime.llm.tools import parse_tools, split_calls
    from edgemm.runtime.skills import Skills

    tools = parse_tools([t for t in Skills(can_look=True).tools() if t["function"]["name"] == "look"])
    seconds, called = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        answer = Chat(lm).send("Is the door open?", tools=tools)
        text = answer.result()
        seconds.append(time.perf_counter() - start)
        called += bool(split_calls(text)[1])
    return {"prompt_tokens": answer.stats.prompt_tokens, "call_s": statistics.median(seconds), "called": called}


def constrained_cost(lm, runs: int, tokens: int) -> dict:
    """Decode speed free and under a JSON schema (alternated), and the grammar's own time per token."""
    from edgemm.runtime.llm import GenerationOptions, ask
    from edgemm.runtime.llm.constrain import Constraint, Grammar

    grammar = Grammar.json_schema(PERSON)
    free_options = GenerationOptions(max_new_tokens=tokens)
    json_options = GenerationOptions(max_new_tokens=tokens, grammar=grammar)
    ask(lm, STRUCTURED, json_options).result()  # warm-up: llguidance's view of the tokenizer is built once
    free, constrained, overhead = [], [], []
    for _ in range(runs):
        answer = ask(lm, FREE, free_options)
        answer.result()
        free.append(answer.stats.decode_tokens_per_s)
        answer = ask(lm, STRUCTURED, json_options)
        answer.result()
        constrained.append(answer.stats.decode_tokens_per_s)
        replay, logits = Constraint(lm, grammar), lm.prefill_tokens([0], lm.new_cache())
        start = time.perf_counter()
        for token in answer.tokens:
            replay.mask(logits)
            replay.advance(token)
        overhead.append((time.perf_counter() - start) / max(len(answer.tokens), 1))
    free_s, per_token = statistics.median(free), statistics.median(overhead)
    return {
        "free_tokens_per_s": free_s,
        "json_tokens_per_s": statistics.median(constrained),
        "grammar_ms_per_token": per_token * 1000,
        "grammar_share": per_token * free_s,  # of one free token's time
    }


def run_bench_skills(args: RunsOptions) -> int:
    from edgemm.runtime.assistant import Assistant
    from edgemm.runtime.llm import LanguageModel
    from edgemm.runtime.speech import Transcriber

    loads = sorted(first_load() for _ in range(3))
    result = {"matcher_first_load_s": loads[1]}
    for name, phrases in (("skill_phrasings", PHRASES), ("other_questions", NOT_SKILLS)):
        times = match_times(phrases, 50)
        result[f"match_{name}_median_ms"] = statistics.median(times) * 1000
        result[f"match_{name}_slowest_ms"] = max(times) * 1000
    lm = LanguageModel.load(args.model, threads=args.threads)
    assistant = Assistant(Transcriber.load(threads=args.threads), lm)
    for question in ("What time is it?", "What is 17 times 23?"):
        result[f"skill_turn_ms {question}"] = statistics.median(
            _turn_seconds(assistant, question) * 1000 for _ in range(args.runs)
        )
    result["model"] = lm.name
    result["tool_call"] = tool_call(lm, args.runs)
    result["constrained"] = constrained_cost(lm, args.runs, 64)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    for key, value in result.items():
        print(f"{key}: {json.dumps(value) if isinstance(value, dict) else value}")
    return 0
