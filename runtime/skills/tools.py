"""The skills as OpenAI "tools" entries, for tool calling with constrained decoding.

Strict schemas: every object lists all its properties in ``required`` and has ``additionalProperties: false``; an
optional argument is one that may be null (OpenAI's strict-mode convention). Types are string, number and null, with
an enum or a pattern where the values are few or fixed.
"""

from __future__ import annotations

import copy

from edgemm.runtime.skills.arithmetic import MAX_CHARS
from edgemm.runtime.skills.timers import MAX_NAME_CHARS, MAX_SECONDS

DAY = {
    "type": ["string", "null"],
    "description": 'null for today, "tomorrow", "yesterday", or a date as YYYY-MM-DD',
    "pattern": r"^(today|tomorrow|yesterday|\d{4}-\d{2}-\d{2})$",
}
NAME = {"type": ["string", "null"], "maxLength": MAX_NAME_CHARS, "description": 'a name such as "pasta", or null'}


def _tool(name: str, description: str, /, **properties) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": list(properties),
                "additionalProperties": False,
            },
        },
    }


TOOLS = [
    _tool("get_time", "The current local time."),
    _tool("get_date", "Today's date, or the date of tomorrow, yesterday or a given day.", day=DAY),
    _tool("get_weekday", "The day of the week today, tomorrow, yesterday or on a given date.", day=DAY),
    _tool(
        "set_timer",
        "Start a countdown timer (1 second to 24 hours).",
        seconds={"type": "number", "minimum": 1, "maximum": MAX_SECONDS, "description": "the timer's length"},
        name=NAME,
    ),
    _tool(
        "set_alarm",
        "Set an alarm for the next time the clock shows a time of day (within 24 hours).",
        time={"type": "string", "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9]$", "description": "24-hour HH:MM"},
        name=NAME,
    ),
    _tool("list_timers", "The running timers and alarms and the time left on each."),
    _tool(
        "cancel_timer",
        "Cancel the timers or alarms with a name, or all of them (name null).",
        name=NAME,
        kind={"type": "string", "enum": ["any", "timer", "alarm"], "description": "which kind to cancel"},
    ),
    _tool(
        "calculate",
        "Exact arithmetic: + - * / // % ** (or ^), parentheses, sqrt, percent, and the same in words.",
        expression={"type": "string", "maxLength": MAX_CHARS, "description": 'e.g. "17 * 23" or "2 ^ 10"'},
    ),
    _tool(
        "convert_units",
        "Convert a value between units of length, mass, volume, temperature, speed, time, data size, area or energy.",
        value={"type": "number"},
        from_unit={"type": "string", "description": 'e.g. "mile", "degree Fahrenheit", "kg"'},
        to_unit={"type": "string"},
    ),
    _tool(
        "identity",
        "Who the assistant is, what it can do, or which models it runs.",
        topic={"type": "string", "enum": ["all", "name", "abilities", "models"]},
    ),
]
LOOK = _tool(
    "look",
    "Look through the camera to answer a question about what is in front of it.",
    question={"type": "string", "description": "the question about the camera's picture"},
)


def tools(can_look: bool = False) -> list[dict]:
    """A fresh copy of every skill's tool entry (``look`` only with a camera)."""
    return copy.deepcopy(TOOLS + ([LOOK] if can_look else []))
