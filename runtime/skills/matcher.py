"""The deterministic intent matcher: hassil over Home Assistant's English sentences for the time, the date and
timers, and edgemm's own templates (sentences.yaml) for the rest; no LLM.

Loaded once, on first use, and cached: hassil, HA's six intents, the templates and the unit names (~0.1 s). A
sentence must match the whole utterance; each matched intent's slots then go through a builder that parses the
wildcards (a duration, a time, a date, an expression, a number) and gives up on what does not parse, so the next
candidate (hassil ranks them: fewest wildcards, most literal words) gets its turn.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import unicodedata
from collections.abc import Callable
from datetime import date
from fractions import Fraction
from importlib import resources

from edgemm.runtime.skills import arithmetic, numbers, units
from edgemm.runtime.skills.calls import SkillCall, SkillError
from edgemm.runtime.skills.timers import duration_label

log = logging.getLogger(__name__)

MAX_MATCH_CHARS = 300  # longer texts are questions for the LLM, not commands: no match, in constant time
HA_INTENTS = (
    "HassGetCurrentTime",
    "HassGetCurrentDate",
    "HassStartTimer",
    "HassCancelTimer",
    "HassCancelAllTimers",
    "HassTimerStatus",
)
HA_LISTS = ("timer_hours", "timer_minutes", "timer_seconds", "timer_half", "timer_name")  # what HA's blocks may use
REFERENCE = re.compile(r"\{(\w+)(?::\w+)?\}|<(\w+)>")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\ufeff]+")

_lock = threading.Lock()
_intents = None


def _references(text: str, rules: dict, seen: set) -> set[str]:
    """The slot lists a template uses, through its expansion rules too."""
    found = set()
    for list_name, rule in REFERENCE.findall(text):
        if list_name:
            found.add(list_name)
        elif rule in rules and rule not in seen:
            seen.add(rule)
            found |= _references(rules[rule], rules, seen)
    return found


def _home_assistant() -> dict:
    """HA's English intents that edgemm handles, without the blocks that need lists it has no values for (areas,
    delayed commands); empty when home-assistant-intents is not installed."""
    try:
        import home_assistant_intents
    except ImportError:
        log.info("home-assistant-intents is not installed: the skills match edgemm's own sentences only")
        return {}
    data = home_assistant_intents.get_intents("en") or {}
    rules, lists = data.get("expansion_rules", {}), {k: v for k, v in data.get("lists", {}).items() if k in HA_LISTS}
    intents = {}
    for name in HA_INTENTS:
        blocks = [
            block
            for block in data.get("intents", {}).get(name, {}).get("data", [])
            if all(_references(s, rules, set()) <= lists.keys() for s in block.get("sentences", []))
        ]
        if blocks:
            intents[name] = {"data": blocks}
    return {"intents": intents, "lists": lists, "expansion_rules": rules, "skip_words": data.get("skip_words", [])}


def _build():
    import yaml
    from hassil import Intents, recognize_ranked

    own = yaml.safe_load(resources.files(__package__).joinpath("sentences.yaml").read_text(encoding="utf-8"))
    ha = _home_assistant()
    own["lists"]["edgemm_unit"] = {"values": [{"in": alias, "out": key} for alias, key in units.ALIASES.items()]}
    # A conversion names a unit: hassil skips those templates unless one of the unit names' words is in the text.
    keywords = sorted({w for alias in units.ALIASES for w in alias.lower().split()} - {"an", "in", "per", "sq", "us"})
    for block in own["intents"]["EdgemmConvertUnits"]["data"]:
        block["required_keywords"] = keywords
    merged = {
        "language": "en",
        "intents": {**ha.get("intents", {}), **own["intents"]},
        "lists": {**ha.get("lists", {}), **own["lists"]},
        "expansion_rules": {**ha.get("expansion_rules", {}), **own["expansion_rules"]},
        "skip_words": [*ha.get("skip_words", []), *own["skip_words"]],
    }
    intents = Intents.from_dict(merged)
    recognize_ranked("set a timer for five minutes", intents, language="en")  # builds the number tries now
    return intents


def load():
    """The compiled intents (built on the first call, then cached)."""
    global _intents
    with _lock:
        if _intents is None:
            _intents = _build()
        return _intents


def clean(text) -> str | None:
    """One line of text to match, or None: not text, too long, or empty once control characters are gone."""
    if not isinstance(text, str) or len(text) > MAX_MATCH_CHARS:
        return None
    text = " ".join(CONTROL.sub(" ", unicodedata.normalize("NFKC", text)).split())
    return text or None


def _arithmetic(text: str) -> SkillCall | None:
    """``text`` as a calculation, when it reads as one: arithmetic that fails for a reason worth saying (division by
    zero, too large) matches too; text that is not arithmetic does not."""
    if arithmetic.expression(text) is None:
        return None
    try:
        arithmetic.calculate(text)
    except SkillError as e:
        if str(e) == arithmetic.UNREADABLE:
            return None
    return SkillCall("calculate", {"expression": text})


# A question that names the camera's picture ("What animal is in this picture?", "how many people are in the
# image") is about the scene whatever else it asks: a template would need a wildcard on both sides of the words.
PICTURE = re.compile(r"\b(this|the|my|your)\s+(picture|photo|photograph|image|camera|camera's picture|frame)\b", re.I)


def match(text: str, today: date) -> SkillCall | None:
    """The skill call ``text`` asks for, or None. ``today`` dates a year-less date ("what day is Christmas")."""
    text = clean(text)
    if text is None:
        return None
    # A bare expression ("17 * 23", "two plus two") has no words for a template to hold on to: it is recognized by
    # the arithmetic reader itself, which accepts nothing but numbers and operators.
    bare = re.sub(r"[?!.=\s]+$", "", text)
    if (call := _arithmetic(bare)) is not None:
        return call
    if PICTURE.search(text):
        return SkillCall("look", {"question": text})
    from hassil import recognize_ranked

    try:
        results = recognize_ranked(text, load(), language="en")
    except Exception as e:  # hassil on hostile text: no match rather than a traceback
        log.debug("hassil failed on %r: %s", text, e)
        return None
    for result in results:
        build = BUILDERS.get(result.intent.name)
        entities = {name: entity.value for name, entity in result.entities.items()}
        call = build(entities, today, text) if build else None
        if call is not None:
            return call
    return None


def _json_number(value: Fraction) -> int | float:
    return int(value) if value.denominator == 1 else float(value)


def _name(entities: dict) -> str | None:
    name = entities.get("name")
    return str(name).strip() or None if name is not None else None


def _day(entities: dict, today: date) -> tuple[bool, str | None]:
    """(understood, day): no day is today (None); a day that does not parse is not understood."""
    if "day" not in entities:
        return True, None
    day = numbers.parse_day(str(entities["day"]), today)
    return day is not None, (None if day == "today" else day)


def _date(entities, today, text):
    ok, day = _day(entities, today)
    return SkillCall("get_date", {"day": day}) if ok else None


def _weekday(entities, today, text):
    ok, day = _day(entities, today)
    return SkillCall("get_weekday", {"day": day}) if ok else None


def _ha_timer(entities, today, text):
    seconds = sum(float(entities.get(k, 0) or 0) * n for k, n in (("hours", 3600), ("minutes", 60), ("seconds", 1)))
    return SkillCall("set_timer", {"seconds": _json_number(Fraction(seconds)), "name": _name(entities)})


def _timer(entities, today, text):
    seconds = numbers.parse_duration(str(entities.get("duration", "")))
    if seconds is None:
        return None
    return SkillCall("set_timer", {"seconds": _json_number(seconds), "name": _name(entities)})


def _alarm(entities, today, text):
    when = numbers.parse_clock_time(str(entities.get("time", "")))
    return SkillCall("set_alarm", {"time": when, "name": _name(entities)}) if when else None


def _ha_cancel(entities, today, text):
    seconds = sum(
        float(entities.get(f"start_{k}", 0) or 0) * n for k, n in (("hours", 3600), ("minutes", 60), ("seconds", 1))
    )
    name = _name(entities) or (duration_label(seconds) if seconds else None)
    return SkillCall("cancel_timer", {"name": name, "kind": "timer"})


def _cancel(entities, today, text):
    return SkillCall("cancel_timer", {"name": _name(entities), "kind": entities.get("kind", "any")})


def _calculate(entities, today, text):
    return _arithmetic(str(entities.get("expression", "")))


def _convert(entities, today, text):
    found = numbers.quantity(str(entities.get("quantity", "")))
    if found is None or "to_unit" not in entities:
        return None
    try:
        source = units.unit(found[1])
    except SkillError:
        return None
    arguments = {"value": _json_number(found[0]), "from_unit": source.key, "to_unit": entities["to_unit"]}
    return SkillCall("convert_units", arguments)


BUILDERS: dict[str, Callable] = {
    "HassGetCurrentTime": lambda entities, today, text: SkillCall("get_time", {}),
    "EdgemmGetTime": lambda entities, today, text: SkillCall("get_time", {}),
    "HassGetCurrentDate": _date,
    "EdgemmGetDate": _date,
    "EdgemmGetWeekday": _weekday,
    "HassStartTimer": _ha_timer,
    "EdgemmSetTimer": _timer,
    "EdgemmSetAlarm": _alarm,
    "HassTimerStatus": lambda entities, today, text: SkillCall("list_timers", {}),
    "EdgemmListTimers": lambda entities, today, text: SkillCall("list_timers", {}),
    "HassCancelTimer": _ha_cancel,
    "HassCancelAllTimers": lambda entities, today, text: SkillCall("cancel_timer", {"name": None, "kind": "timer"}),
    "EdgemmCancelTimer": _cancel,
    "EdgemmCalculate": _calculate,
    "EdgemmConvertUnits": _convert,
    "EdgemmIdentity": lambda entities, today, text: SkillCall("identity", {"topic": entities.get("topic", "all")}),
    "EdgemmLook": lambda entities, today, text: SkillCall("look", {"question": text}),
}


def describe() -> str:
    """Which intents and how many templates are loaded (for docs and debugging)."""
    intents = load()
    counts = {name: sum(len(d.sentence_texts) for d in i.data) for name, i in intents.intents.items()}
    return json.dumps(counts, indent=1)
