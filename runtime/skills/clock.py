"""The clock the skills read (injectable: tests use FixedClock), and how times and dates are said in English.

Names come from tables, not strftime, so the sentences do not change with the machine's locale.
"""

from __future__ import annotations

import threading
import time
from datetime import date, datetime, timedelta
from typing import Protocol

from edgemm.runtime.errors import OptionsError
from edgemm.runtime.skills.numbers import MONTHS

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class Clock(Protocol):
    def now(self) -> datetime:
        """The local time, timezone-aware."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary start that never go back: what timers count in."""


class SystemClock:
    """This machine's clock, in its local time zone."""

    def now(self) -> datetime:
        return datetime.now().astimezone()

    def monotonic(self) -> float:
        return time.monotonic()


class FixedClock:
    """A clock that moves only when told: ``advance(seconds)`` moves ``now()`` and ``monotonic()`` together, and
    each ``monotonic()`` reading then adds ``step`` seconds (0: time stands still between readings).
    ``monotonic`` is settable through ``set_monotonic``, which moves ``now()`` by the same amount."""

    def __init__(self, when: datetime, step: float = 0.0, monotonic: float = 1000.0):
        if not isinstance(when, datetime) or when.utcoffset() is None:
            raise OptionsError("FixedClock needs a timezone-aware datetime, e.g. datetime(..., tzinfo=timezone.utc)")
        self.start, self.step, self.origin = when, float(step), float(monotonic)
        self.elapsed = 0.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.elapsed)

    def monotonic(self) -> float:
        with self._lock:
            reading = self.origin + self.elapsed
            self.elapsed += self.step
            return reading

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.elapsed += float(seconds)

    def set_monotonic(self, value: float) -> None:
        with self._lock:
            self.elapsed = float(value) - self.origin


def say_time(when: datetime) -> str:
    """ "4:07 PM", "12:00 AM" (midnight)."""
    return f"{(when.hour - 1) % 12 + 1}:{when.minute:02d} {'AM' if when.hour < 12 else 'PM'}"


def say_date(day: date) -> str:
    """ "Saturday, December 5, 2026"."""
    return f"{WEEKDAYS[day.weekday()]}, {MONTHS[day.month - 1]} {day.day}, {day.year}"


def say_month_day(day: date) -> str:
    """ "December 25, 2026"."""
    return f"{MONTHS[day.month - 1]} {day.day}, {day.year}"


def say_hours_minutes(hhmm: str) -> str:
    """ "07:30" -> "7:30 AM"."""
    hour, minute = map(int, hhmm.split(":"))
    return say_time(datetime(2000, 1, 1, hour, minute))
