"""The assistant's skills: each answers one kind of request with one sentence, from real data (the clock, the
timers, exact arithmetic, a unit table) instead of the language model's guess."""

from __future__ import annotations

import math
import numbers
import re
from datetime import date, timedelta
from fractions import Fraction

from edgemm.runtime.skills import arithmetic, matcher, units
from edgemm.runtime.skills.calls import SkillCall, SkillError, SkillReply
from edgemm.runtime.skills.clock import WEEKDAYS, Clock, SystemClock, say_date, say_month_day, say_time
from edgemm.runtime.skills.numbers import MONTHS, number
from edgemm.runtime.skills.timers import Timers, cancelled, clean_name, duration_words, status
from edgemm.runtime.skills.tools import tools

NAME = "I am edgemm, an assistant that runs offline on this device."
ROLES = (("llm", "language"), ("speech", "speech recognition"), ("vision", "images"), ("voice", "my voice"))
# Company names never said as part of a model's name ("openai/whisper-tiny" is said "whisper-tiny").
VENDORS = re.compile(
    r"\b(openai|open ai|google|deepmind|meta|facebook|microsoft|anthropic|alibaba|amazon|apple|nvidia|ibm|"
    r"mistralai|huggingface|hugging face|huggingfacetb|baidu|tencent|bytedance|deepseek-ai|xai|cohere|"
    r"stabilityai)\b[\s_-]*",
    re.IGNORECASE,
)
TIMER_SKILLS = frozenset({"set_timer", "set_alarm", "list_timers", "cancel_timer"})
ONE_SHOT = "Timers ring only while edgemm keeps running: set them in edgemm chat or edgemm listen."
HHMM = re.compile(r"(\d{1,2}):(\d{2})")


def _model_name(name) -> str | None:
    """A model's name as said: without its organisation ("org/model"), vendor words or odd characters."""
    if not isinstance(name, str):
        return None
    name = VENDORS.sub("", name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1])
    name = re.sub(r"[^\w.+ -]", "", name).strip(" -_.")[:60]
    return name or None


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _arguments(call: SkillCall, allowed: tuple[str, ...]) -> dict:
    if not isinstance(call.arguments, dict):
        raise SkillError(f"The arguments of {call.name} must be an object.")
    extra = sorted(set(call.arguments) - set(allowed), key=str)
    if extra:
        raise SkillError(f"{call.name} does not take an argument called {str(extra[0])[:40]}.")
    return call.arguments


def _text_argument(arguments: dict, key: str, call: str) -> str | None:
    value = arguments.get(key)
    if value is not None and not isinstance(value, str):
        raise SkillError(f"The {key} for {call} must be text.")
    return value


def _number_argument(value, what: str) -> Fraction:
    """A JSON number (or its text) as an exact fraction: 0.1 is 1/10, as written."""
    if isinstance(value, str):
        parsed = number(value[:100])
        if parsed is not None:
            return parsed
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        if isinstance(value, int):
            if value.bit_length() > arithmetic.MAX_BITS:
                raise SkillError(arithmetic.TOO_LARGE)
            return Fraction(value)
        if math.isfinite(value):
            return arithmetic.bounded(Fraction(repr(float(value))))
    raise SkillError(f"The {what} must be a number.")


class Skills:
    """Time, date, weekday, timers and alarms, arithmetic, unit conversion and identity, with a deterministic
    matcher (:meth:`match`) and OpenAI tool entries (:meth:`tools`) for the language model."""

    def __init__(
        self,
        clock: Clock | None = None,
        timers: Timers | None = None,
        identity: dict | None = None,
        can_look: bool = False,
        keeps_running: bool = True,
    ):
        """``identity``: {"models": {"speech": ..., "llm": ..., "vision": ..., "voice": ...}}, the names the
        assistant loaded; ``can_look``: a camera is connected (adds the ``look`` tool and its sentence);
        ``keeps_running``: False for one question (``edgemm ask``): timers, which could never ring, are declined."""
        self.keeps_running = keeps_running
        self.clock = clock or SystemClock()
        self.timers = timers or Timers(self.clock)
        self.identity = identity if isinstance(identity, dict) else {}
        self.can_look = bool(can_look)
        self._handlers = {
            "get_time": self._get_time,
            "get_date": self._get_date,
            "get_weekday": self._get_weekday,
            "set_timer": self._set_timer,
            "set_alarm": self._set_alarm,
            "list_timers": self._list_timers,
            "cancel_timer": self._cancel_timer,
            "calculate": self._calculate,
            "convert_units": self._convert_units,
            "identity": self._identity,
            "look": self._look,
        }

    def warm_up(self) -> None:
        """Load the matcher now (~0.2 s) rather than on the first question."""
        matcher.load()

    def match(self, text: str) -> SkillCall | None:
        """The skill ``text`` asks for, or None (a question for the language model). Deterministic, about a
        millisecond; never raises."""
        return matcher.match(text, self.clock.now().date())

    def run(self, call: SkillCall) -> SkillReply:
        """Carry out ``call``; SkillError (one sentence) for an unknown skill or bad arguments."""
        if not isinstance(call, SkillCall) or not isinstance(call.name, str):
            raise SkillError("A skill call needs a skill's name and its arguments.")
        handler = self._handlers.get(call.name)
        if handler is None:
            raise SkillError(f"I have no skill called {call.name[:40]}.")
        if call.name in TIMER_SKILLS and not self.keeps_running:
            raise SkillError(ONE_SHOT)
        text, data = handler(call)
        return SkillReply(text, call, data)

    def answer(self, text: str) -> SkillReply | None:
        """``match`` then ``run``; a SkillError becomes a reply saying it (``data["error"]``). None: no skill.
        A ``look`` request comes back as such a reply too: the assistant answers it with the camera."""
        call = self.match(text)
        if call is None:
            return None
        try:
            return self.run(call)
        except SkillError as e:
            return SkillReply(str(e), call, {"error": str(e)})

    def tools(self) -> list[dict]:
        """OpenAI "tools" entries for every skill (``look`` only with a camera)."""
        return tools(self.can_look)

    # The skills: each returns (sentence, data).

    def _get_time(self, call: SkillCall):
        _arguments(call, ())
        now = self.clock.now()
        return f"It is {say_time(now)}.", {"time": now.strftime("%H:%M"), "iso": now.isoformat(timespec="seconds")}

    def _day(self, call: SkillCall) -> tuple[date, str | None]:
        """The day asked about and its relation to today ("today", "tomorrow", "yesterday" or None)."""
        day = _text_argument(_arguments(call, ("day",)), "day", call.name)
        today = self.clock.now().date()
        word = (day or "today").strip().lower()
        offsets = {"today": 0, "tomorrow": 1, "yesterday": -1}
        if word in offsets:
            try:
                return today + timedelta(days=offsets[word]), word
            except OverflowError:
                raise SkillError("I can only work with dates from year 1 to year 9999.") from None
        m = re.fullmatch(r"(\d{1,4})-(\d{1,2})-(\d{1,2})", word)
        if not m:
            raise SkillError(f"I could not read the date {word[:40]}; I need it as year-month-day.")
        year, month, number = map(int, m.groups())
        if not 1 <= year <= 9999:
            raise SkillError("I can only work with dates from year 1 to year 9999.")
        try:
            when = date(year, month, number)
        except ValueError:
            shown = f"{MONTHS[month - 1]} {number}, {year}" if 1 <= month <= 12 else f"{year}-{month}-{number}"
            raise SkillError(f"{shown} is not a date in the calendar.") from None
        relation = {0: "today", 1: "tomorrow", -1: "yesterday"}.get((when - today).days)
        return when, relation

    def _get_date(self, call: SkillCall):
        when, relation = self._day(call)
        data = {"date": when.isoformat(), "weekday": WEEKDAYS[when.weekday()]}
        if relation:
            verb = "was" if relation == "yesterday" else "is"
            return f"{relation.capitalize()} {verb} {say_date(when)}.", data
        return f"{say_month_day(when)} {self._tense(when)} a {WEEKDAYS[when.weekday()]}.", data

    def _get_weekday(self, call: SkillCall):
        when, relation = self._day(call)
        data = {"date": when.isoformat(), "weekday": WEEKDAYS[when.weekday()]}
        if relation == "today":
            return f"It is {WEEKDAYS[when.weekday()]}.", data
        if relation:
            return f"{relation.capitalize()} {self._tense(when)} {WEEKDAYS[when.weekday()]}.", data
        return f"{say_month_day(when)} {self._tense(when)} a {WEEKDAYS[when.weekday()]}.", data

    def _tense(self, when: date) -> str:
        return "was" if when < self.clock.now().date() else "is"

    def _set_timer(self, call: SkillCall):
        arguments = _arguments(call, ("seconds", "name"))
        if "seconds" not in arguments:
            raise SkillError("I need to know how long the timer should run.")
        seconds = arguments["seconds"]
        if isinstance(seconds, str):
            seconds = float(_number_argument(seconds, "timer's length"))
        name = _text_argument(arguments, "name", call.name)
        timer = self.timers.set(seconds, name, "timer")
        length = duration_words(timer.seconds)
        named = clean_name(name) is not None
        text = f"The {timer.name} timer is set for {length}." if named else f"Timer set for {length}."
        return text, {"name": timer.name, "seconds": timer.seconds, "due": timer.due}

    def _set_alarm(self, call: SkillCall):
        arguments = _arguments(call, ("time", "name"))
        when = _text_argument(arguments, "time", call.name)
        m = HHMM.fullmatch((when or "").strip())
        if not m or int(m[1]) > 23 or int(m[2]) > 59:
            shown = (when or "").strip()[:20] or "That"
            raise SkillError(f"{shown} is not a time of day; I need hours and minutes, like 07:30.")
        now = self.clock.now()
        ring = now.replace(hour=int(m[1]), minute=int(m[2]), second=0, microsecond=0)
        if ring <= now:
            ring += timedelta(days=1)
        name = _text_argument(arguments, "name", call.name)
        timer = self.timers.set((ring - now).total_seconds(), name, "alarm")
        day = " tomorrow" if ring.date() != now.date() else ""
        text = f"The {timer.name} alarm is set for " if clean_name(name, "alarm") else "Alarm set for "
        data = {"name": timer.name, "time": ring.strftime("%H:%M"), "seconds": timer.seconds, "due": timer.due}
        return f"{text}{say_time(ring)}{day}.", data

    def _list_timers(self, call: SkillCall):
        _arguments(call, ())
        now = self.clock.monotonic()
        timers = self.timers.list()
        items = [{"name": t.name, "kind": t.kind, "seconds_left": t.left(now)} for t in timers]
        return status(timers, now), {"timers": items}

    def _cancel_timer(self, call: SkillCall):
        arguments = _arguments(call, ("name", "kind"))
        kind = arguments.get("kind") or "any"
        if kind not in ("any", "timer", "alarm"):
            raise SkillError("The kind of timer to cancel is timer, alarm or any.")
        kind = None if kind == "any" else kind
        removed = self.timers.cancel(_text_argument(arguments, "name", call.name), kind)
        return cancelled(removed, kind), {"cancelled": [t.name for t in removed]}

    def _calculate(self, call: SkillCall):
        expression = _text_argument(_arguments(call, ("expression",)), "expression", call.name)
        result = arithmetic.calculate(expression or "")
        about = "" if result.exact else "about "
        if result.spoken:
            text = f"{result.spoken[0].upper()}{result.spoken[1:]} is {about}{result.text}."
        else:
            text = f"The answer is {about}{result.text}."
        return text, {"expression": result.source, "result": result.text, "exact": result.exact}

    def _convert_units(self, call: SkillCall):
        arguments = _arguments(call, ("value", "from_unit", "to_unit"))
        value = _number_argument(arguments.get("value"), "value to convert")
        source = units.unit(arguments.get("from_unit"))
        target = units.unit(arguments.get("to_unit"))
        result = arithmetic.bounded(units.convert(value, source, target))
        value_text, _ = arithmetic.format_number(value)
        result_text, rounded = arithmetic.format_number(result)
        about = "about " if rounded else ""
        text = f"{units.say(value_text, source)} is {about}{units.say(result_text, target)}."
        return text, {"value": result_text, "unit": target.key, "exact": not rounded}

    def _identity(self, call: SkillCall):
        topic = _arguments(call, ("topic",)).get("topic") or "all"
        if topic not in ("all", "name", "abilities", "models"):
            raise SkillError("I can say who I am, what I can do or which models I use.")
        models = self.identity.get("models") if isinstance(self.identity.get("models"), dict) else {}
        said = {role: name for role, _ in ROLES if (name := _model_name(models.get(role)))}
        uses = [f"{said[role]} for {what}" for role, what in ROLES if role in said]
        model_sentence = f"I use {_join(uses)}." if uses else "I run small open models on this device."
        camera = "look through the camera, " if self.can_look else ""
        abilities = (
            f"I can tell the time and date, set timers and alarms, calculate, convert units, {camera}"
            "and answer questions."
        )
        sentences = {"name": [NAME], "models": ["I am edgemm.", model_sentence], "abilities": [abilities]}
        text = " ".join(sentences.get(topic) or [NAME, model_sentence, abilities])
        return text, {"name": "edgemm", "models": said}

    def _look(self, call: SkillCall):
        if not self.can_look:
            raise SkillError("I cannot see anything: no camera is connected.")
        raise SkillError("Looking through the camera is done by the assistant, not by a skill.")
