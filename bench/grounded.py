"""`edgemm eval`'s grounded categories, asked of the assistant with each LLM bundle:

- ``skills``: the time, date and weekday in 10 phrasings each against an injected clock, 3-4 digit sums and products
  (seeded), timers and identity, each with its one exact expected sentence or number;
- ``tools``: the tool-calling set (bench/toolcalls.py), tool_choice "required": right function and arguments, and
  separately whether every returned call validates against its schema (an answer cut by max_tokens returns none);
- ``memory``: a fact said in one turn, asked about in the next ("I live in Rome." -> "In which country is the city
  where I live?").
"""

from __future__ import annotations

import random
import re
from datetime import datetime, timedelta, timezone

WHEN = datetime(2026, 12, 5, 16, 7, tzinfo=timezone(timedelta(hours=1)))  # a Saturday
TIME = ["What time is it?", "what's the time", "Tell me the time.", "What time is it now?", "Do you know the time?",
        "Can you tell me what time it is?", "What's the current time?", "time please", "What is the time right now?",
        "Could you tell me the time?"]  # fmt: skip
DATE = ["What is today's date?", "What's the date?", "What date is it?", "What's the date today?", "Tell me the date.",
        "What is the date today?", "Which date is it today?", "What's today's date?", "Can you tell me the date?",
        "What date is today?"]  # fmt: skip
WEEKDAY = ["What day is it?", "What day is it today?", "What day of the week is it?", "Which day is today?",
           "What's the day today?", "Tell me what day it is.", "What weekday is it?", "Is today Saturday?",
           "What day of the week is today?", "Which weekday is it today?"]  # fmt: skip
CLOCK = [(TIME, "It is 4:07 PM."), (DATE, "Today is Saturday, December 5, 2026."), (WEEKDAY, "Saturday")]
ARITHMETIC_FORMS = ["What is {a} plus {b}?", "{a} times {b}", "What's {a} multiplied by {b}?", "what is {a} + {b}"]
TIMERS = [("Set a timer for five minutes.", "Timer set for 5 minutes."),
          ("Start a timer for 90 seconds.", "Timer set for 1 minute and 30 seconds."),
          ("Set a timer for one hour.", "Timer set for 1 hour.")]  # fmt: skip
IDENTITY = ["Who are you?", "What is your name?", "Which model are you?"]
VENDORS = re.compile(r"\b(openai|google|meta|microsoft|anthropic|alibaba|chatgpt|created by)\b", re.IGNORECASE)
MEMORY = [
    ("I live in Rome.", "In which country is the city where I live?", ["Italy"]),
    ("My sister is called Anna.", "What is my sister's name?", ["Anna"]),
    ("My favourite colour is green.", "What is my favourite colour?", ["green"]),
    ("I am allergic to peanuts.", "What am I allergic to?", ["peanuts", "peanut"]),
    ("My dog is called Rex.", "What is my dog's name?", ["Rex"]),
    ("I work as a nurse.", "What is my job?", ["nurse"]),
]


def arithmetic(count: int, seed: int = 27) -> list[tuple[str, int]]:
    """``count`` questions of random 3-4 digit sums and products, with their exact results."""
    rng, out = random.Random(seed), []
    for i in range(count):
        a, b = rng.randint(100, 9999), rng.randint(100, 9999)
        form = ARITHMETIC_FORMS[i % len(ARITHMETIC_FORMS)]
        out.append((form.format(a=a, b=b), a * b if ("times" in form or "multiplied" in form) else a + b))
    return out


def says_number(answer: str, value: int) -> bool:
    return f"{value:,}" in answer or re.search(rf"\b{value}\b", answer) is not None


def _respond(assistant, text: str) -> str:
    from edgemm.runtime.assistant import TurnEnd

    return [e.turn for e in assistant.respond(text) if isinstance(e, TurnEnd)][0].answer


def skills(assistant) -> list[dict]:
    """The skills questions, answered by ``assistant`` (whose clock must be ``FixedClock(WHEN)``)."""
    checks = [(q, lambda a, e=expected: e in a) for questions, expected in CLOCK for q in questions]
    checks += [(q, lambda a, v=value: says_number(a, v)) for q, value in arithmetic(20)]
    checks += [(q, lambda a, e=expected: a == e) for q, expected in TIMERS]
    checks += [(q, lambda a: "edgemm" in a and not VENDORS.search(a)) for q in IDENTITY]
    results = []
    for question, check in checks:
        answer = _respond(assistant, question)
        results.append({"question": question, "answer": answer, "passed": bool(check(answer))})
    assistant.skills.timers.cancel()
    return results


def tools(lm) -> list[dict]:
    """The tool-calling set, tool_choice "required", each request in a fresh chat (the default system prompt)."""
    from edgemm.bench.toolcalls import CASES, TOOLS, right, valid
    from edgemm.runtime.llm import Chat, GenerationOptions
    from edgemm.runtime.llm.tools import parse_tools, split_calls

    offered, results = parse_tools(TOOLS), []
    for question, name, arguments in CASES:
        answer = Chat(lm, options=GenerationOptions(max_new_tokens=120)).send(
            question, tools=offered, tool_choice="required"
        )
        calls = split_calls(answer.result())[1]
        results.append(
            {
                "question": question,
                "answer": "; ".join(f"{c.name}({c.arguments})" for c in calls) or answer.text,
                "passed": bool(calls) and right(calls[0].name, calls[0].arguments, name, arguments),
                "valid": all(valid(c.name, c.arguments) for c in calls) if calls else None,
            }
        )
    return results


def memory(assistant) -> list[dict]:
    from edgemm.bench.eval_questions import score

    results = []
    for statement, question, accepted in MEMORY:
        assistant.chat.reset()
        _respond(assistant, statement)
        answer = _respond(assistant, question)
        results.append(
            {"question": f"{statement} / {question}", "answer": answer, "passed": score(answer, accepted).passed}
        )
    return results


def evaluate(lm, categories) -> dict:
    """{category: [answers]} for the grounded ``categories`` asked of an assistant on ``lm``."""
    from edgemm.runtime.assistant import Assistant
    from edgemm.runtime.skills import FixedClock
    from edgemm.runtime.speech import Transcriber

    assistant = Assistant(Transcriber.load(), lm, clock=FixedClock(WHEN))
    out = {}
    if "skills" in categories:
        out["skills"] = skills(assistant)
    if "tools" in categories:
        out["tools"] = tools(lm)
    if "memory" in categories:
        out["memory"] = memory(assistant)
    return out
