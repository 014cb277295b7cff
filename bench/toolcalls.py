"""The tool-calling set: 30 single-call requests over six function schemas, each with the call it should produce.

Used by `edgemm eval` (category ``tools``) and by the server's tool tests. A call is right when it names the expected
function and every expected argument is there with the expected value (texts compared case-insensitively, numbers
exactly); arguments the request does not determine are not checked. Whether a call is valid (parses, validates
against its schema) is a separate, stricter check: that one must hold for every call.
"""

from __future__ import annotations

import json

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city, e.g. Paris"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "set_timer",
            "description": "Start a countdown timer.",
            "parameters": {
                "type": "object",
                "properties": {
                    "minutes": {"type": "integer", "minimum": 0, "maximum": 1440},
                    "seconds": {"type": "integer", "minimum": 0, "maximum": 59},
                    "label": {"type": "string"},
                },
                "required": ["minutes", "seconds"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "send_message",
            "description": "Send a text message to a contact.",
            "parameters": {
                "type": "object",
                "properties": {
                    "to": {"type": "string", "description": "The contact's name"},
                    "text": {"type": "string"},
                },
                "required": ["to", "text"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert_currency",
            "description": "Convert an amount of money between currencies.",
            "parameters": {
                "type": "object",
                "properties": {
                    "amount": {"type": "number"},
                    "from_currency": {"type": "string", "description": "ISO code, e.g. USD"},
                    "to_currency": {"type": "string", "description": "ISO code, e.g. EUR"},
                },
                "required": ["amount", "from_currency", "to_currency"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "set_light",
            "description": "Turn a room's light on or off, optionally with a brightness in percent.",
            "parameters": {
                "type": "object",
                "properties": {
                    "room": {"type": "string", "enum": ["kitchen", "bedroom", "living room", "bathroom", "office"]},
                    "on": {"type": "boolean"},
                    "brightness": {"type": "integer", "minimum": 0, "maximum": 100},
                },
                "required": ["room", "on"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_recipes",
            "description": "Find recipes by main ingredient.",
            "parameters": {
                "type": "object",
                "properties": {
                    "ingredient": {"type": "string"},
                    "max_minutes": {"type": "integer", "minimum": 1},
                },
                "required": ["ingredient"],
                "additionalProperties": False,
            },
        },
    },
]

# (request, expected function, expected arguments)
CASES = [
    ("What's the weather in Paris?", "get_weather", {"city": "Paris"}),
    ("Is it raining in London right now?", "get_weather", {"city": "London"}),
    ("How hot is it in Tokyo in fahrenheit?", "get_weather", {"city": "Tokyo", "unit": "fahrenheit"}),
    ("Tell me the weather in Berlin in celsius.", "get_weather", {"city": "Berlin", "unit": "celsius"}),
    ("What's it like outside in Madrid today?", "get_weather", {"city": "Madrid"}),
    ("Set a timer for 5 minutes.", "set_timer", {"minutes": 5, "seconds": 0}),
    ("Start a 10 minute timer.", "set_timer", {"minutes": 10, "seconds": 0}),
    ("Timer for 2 minutes and 30 seconds please.", "set_timer", {"minutes": 2, "seconds": 30}),
    ("Set a 45 second timer.", "set_timer", {"minutes": 0, "seconds": 45}),
    ("Set a pasta timer for 12 minutes.", "set_timer", {"minutes": 12, "seconds": 0, "label": "pasta"}),
    ("Text Anna that I am running late.", "send_message", {"to": "Anna"}),
    ("Send a message to Bob saying dinner is ready.", "send_message", {"to": "Bob"}),
    ("Tell Maria I will call her tomorrow.", "send_message", {"to": "Maria"}),
    ("Message Tom: the meeting moved to 3 pm.", "send_message", {"to": "Tom"}),
    ("Send Lisa a text: happy birthday!", "send_message", {"to": "Lisa"}),
    (
        "Convert 100 dollars to euros.",
        "convert_currency",
        {"amount": 100, "from_currency": "USD", "to_currency": "EUR"},
    ),
    (
        "How much is 50 euros in US dollars?",
        "convert_currency",
        {"amount": 50, "from_currency": "EUR", "to_currency": "USD"},
    ),
    ("What is 20 pounds in yen?", "convert_currency", {"amount": 20, "from_currency": "GBP", "to_currency": "JPY"}),
    ("Convert 75 CHF to EUR.", "convert_currency", {"amount": 75, "from_currency": "CHF", "to_currency": "EUR"}),
    (
        "How many dollars is 1000 yen?",
        "convert_currency",
        {"amount": 1000, "from_currency": "JPY", "to_currency": "USD"},
    ),
    ("Turn on the kitchen light.", "set_light", {"room": "kitchen", "on": True}),
    ("Switch off the bedroom light.", "set_light", {"room": "bedroom", "on": False}),
    ("Set the living room light to 40 percent.", "set_light", {"room": "living room", "on": True, "brightness": 40}),
    ("Turn the office light off please.", "set_light", {"room": "office", "on": False}),
    ("Lights on in the bathroom.", "set_light", {"room": "bathroom", "on": True}),
    ("Find me a recipe with chicken.", "search_recipes", {"ingredient": "chicken"}),
    (
        "What can I cook with mushrooms in under 30 minutes?",
        "search_recipes",
        {"ingredient": "mushrooms", "max_minutes": 30},
    ),
    ("Show recipes using lentils.", "search_recipes", {"ingredient": "lentils"}),
    ("I have some salmon, any recipe ideas?", "search_recipes", {"ingredient": "salmon"}),
    ("Quick pasta recipes, 20 minutes max.", "search_recipes", {"ingredient": "pasta", "max_minutes": 20}),
]


def _same(value, expected) -> bool:
    if isinstance(expected, str):
        return isinstance(value, str) and value.strip().lower().rstrip("s") == expected.lower().rstrip("s")
    if isinstance(expected, bool):
        return value is expected
    return isinstance(value, int | float) and not isinstance(value, bool) and value == expected


def right(name: str, arguments: str, expected_name: str, expected: dict) -> bool:
    """Whether a call (its name and its arguments' JSON text) is the expected one."""
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return False
    return name == expected_name and all(_same(parsed.get(k), v) for k, v in expected.items())


def valid(name: str, arguments: str) -> bool:
    """Whether a call parses and its arguments validate against its function's schema (jsonschema)."""
    import jsonschema

    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    try:
        jsonschema.validate(json.loads(arguments), schemas[name])
    except (ValueError, KeyError, jsonschema.ValidationError):
        return False
    return True
