"""Countdown timers and alarms, several at once, counted on the clock's monotonic seconds.

Nothing runs in the background: the caller asks :meth:`Timers.due` (for instance every second, or at
:meth:`Timers.next_due`) and announces what it returns. An alarm is a timer for the seconds until a time of day.
"""

from __future__ import annotations

import math
import numbers
import re
import threading
from dataclasses import dataclass
from datetime import timedelta

from edgemm.runtime.errors import OptionsError
from edgemm.runtime.skills.calls import SkillError
from edgemm.runtime.skills.clock import Clock, say_time

MAX_TIMERS = 32
MIN_SECONDS, MAX_SECONDS = 1, 24 * 3600
MAX_NAME_CHARS = 40
KINDS = ("timer", "alarm")
UNITS = (("hour", 3600), ("minute", 60), ("second", 1))


def _parts(seconds: float) -> list[tuple[str, float]]:
    """(unit, count) of a duration: whole hours and minutes, then seconds (one decimal under 10 s)."""
    seconds = round(seconds, 1) if seconds < 10 else round(seconds)
    parts = []
    for unit, size in UNITS:
        count = seconds // size if size > 1 else seconds
        if count:
            parts.append((unit, int(count) if count == int(count) else count))
            seconds -= count * size
    return parts or [("second", 0)]


def duration_words(seconds: float) -> str:
    """ "5 minutes", "1 hour and 30 minutes", "1 hour, 5 minutes and 3 seconds", "1.5 seconds"."""
    words = [f"{count} {unit}{'' if count == 1 else 's'}" for unit, count in _parts(seconds)]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def duration_label(seconds: float) -> str:
    """The duration as a timer's name: "5 minute", "1 hour 30 minute" ("your 5 minute timer")."""
    return " ".join(f"{count} {unit}" for unit, count in _parts(seconds))


def clean_name(name: str | None, kind: str = "timer") -> str | None:
    """A user's name for a timer without control characters, "the"/"my" or a trailing "timer"; None when empty."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise SkillError("A timer's name must be text.")
    name = " ".join(re.sub(r"[\x00-\x1f\x7f-\x9f]", " ", name).split())
    name = re.sub(rf"^(the|my|a|an)\s+|\s+({'|'.join(KINDS)})s?$", "", name, flags=re.IGNORECASE)
    if len(name) > MAX_NAME_CHARS:
        raise SkillError(f"A {kind} name can be at most {MAX_NAME_CHARS} characters long.")
    return name or None


def _key(name: str) -> list[str]:
    return re.sub(r"[^\w:]+", " ", name.casefold()).split()


@dataclass(frozen=True)
class Timer:
    name: str  # the user's name ("pasta"), else the duration ("5 minute") or the alarm's time ("7:30 AM")
    seconds: float  # the duration asked for (an alarm: the seconds from when it was set)
    due: float  # the clock's monotonic() reading when it fires
    kind: str = "timer"  # "timer" or "alarm"

    def announcement(self) -> str:
        """ "Your 5 minute timer is done." / "Your 7:30 AM alarm is ringing." """
        return f"Your {self.name} alarm is ringing." if self.kind == "alarm" else f"Your {self.name} timer is done."

    def left(self, now: float) -> float:
        """Seconds until it fires (0 once due)."""
        return max(0.0, self.due - now)


class Timers:
    """The running timers and alarms; thread-safe."""

    def __init__(self, clock: Clock, max_timers: int = MAX_TIMERS):
        self.clock, self.max_timers = clock, max_timers
        self._timers: list[Timer] = []
        self._lock = threading.Lock()

    def set(self, seconds: float, name: str | None = None, kind: str = "timer") -> Timer:
        """Start a timer (1 s to 24 h) or an alarm (up to 24 h ahead); SkillError says why not."""
        if kind not in KINDS:
            raise OptionsError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real):
            raise SkillError(f"A {kind}'s length must be a number of seconds.")
        low = 0 if kind == "alarm" else MIN_SECONDS
        if not low <= seconds <= MAX_SECONDS or seconds == 0:  # NaN too (it compares false); big ints stay ints
            raise SkillError("I can only set timers between 1 second and 24 hours.")
        seconds, name = float(seconds), clean_name(name, kind)
        if name is None:
            ring = self.clock.now() + timedelta(seconds=seconds)
            name = say_time(ring) if kind == "alarm" else duration_label(seconds)
        with self._lock:
            if len(self._timers) >= self.max_timers:
                raise SkillError(f"I can only keep {self.max_timers} timers at once; cancel one first.")
            timer = Timer(name, seconds, self.clock.monotonic() + seconds, kind)
            self._timers.append(timer)
        return timer

    def list(self) -> list[Timer]:
        """The timers and alarms, the next to fire first."""
        with self._lock:
            return sorted(self._timers, key=lambda t: t.due)

    def cancel(self, name: str | None = None, kind: str | None = None) -> list[Timer]:
        """Stop the timers called ``name`` (None: all of them), of ``kind`` only when given; returns them. An
        unknown name raises SkillError. A name matches its first words too: "7:30" finds the "7:30 AM" alarm."""
        key = _key(clean_name(name) or "") if name is not None else None
        with self._lock:
            chosen = [
                t
                for t in self._timers
                if (kind is None or t.kind == kind) and (not key or _key(t.name)[: len(key)] == key)
            ]
            if key and not chosen:
                raise SkillError(f"You have no {kind or 'timer'} called {clean_name(name)}.")
            gone = {id(t) for t in chosen}
            self._timers = [t for t in self._timers if id(t) not in gone]
        return sorted(chosen, key=lambda t: t.due)

    def due(self, now_monotonic: float | None = None) -> list[Timer]:
        """Remove and return the timers that have fired, the earliest first (the caller announces them)."""
        now = self.clock.monotonic() if now_monotonic is None else now_monotonic
        with self._lock:
            fired = sorted((t for t in self._timers if t.due <= now), key=lambda t: t.due)
            self._timers = [t for t in self._timers if t.due > now]
        return fired

    def next_due(self) -> float | None:
        """The monotonic time the next timer fires, or None when there is none."""
        with self._lock:
            return min((t.due for t in self._timers), default=None)


def status(timers: list[Timer], now: float) -> str:
    """One sentence listing the timers: "You have 2 timers: the pasta timer has 4 minutes left, and ..."."""
    if not timers:
        return "You have no timers or alarms."
    kinds = {t.kind for t in timers}
    what = "timers and alarms" if len(kinds) == 2 else f"{timers[0].kind}s"
    items = [
        f"the {t.name} alarm rings in {duration_words(math.ceil(t.left(now)))}"
        if t.kind == "alarm"
        else f"the {t.name} timer has {duration_words(math.ceil(t.left(now)))} left"
        for t in timers
    ]
    if len(items) == 1:
        return f"You have one {timers[0].kind}: {items[0]}."
    return f"You have {len(timers)} {what}: {', '.join(items[:-1])}, and {items[-1]}."


def cancelled(removed: list[Timer], kind: str | None) -> str:
    """ "Cancelled the pasta timer." / "Cancelled 3 timers." / "You have no timers to cancel." """
    if not removed:
        return f"You have no {kind or 'timer'}s to cancel."
    if len(removed) == 1:
        return f"Cancelled the {removed[0].name} {removed[0].kind}."
    kinds = {t.kind for t in removed}
    return f"Cancelled {len(removed)} {'timers and alarms' if len(kinds) == 2 else removed[0].kind + 's'}."
