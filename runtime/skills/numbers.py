"""Numbers, durations, clock times and dates as a speech recognizer writes them: "two and a half hours",
"a minute and 30 seconds", "7:30 a.m.", "half past six", "December 25th". Exact (fractions.Fraction), bounded."""

from __future__ import annotations

import re
from datetime import date, timedelta
from fractions import Fraction

MAX_DIGITS = 100  # a written number longer than this is refused (Python's int() refuses 4,300 digits with a traceback)

ONES = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
SCALES = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
FRACTIONS = {"half": Fraction(1, 2), "quarter": Fraction(1, 4)}  # "two and a half", "an hour and a quarter"
ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8, "ninth": 9,
    "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14, "fifteenth": 15,
    "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19, "twentieth": 20, "thirtieth": 30,
}  # fmt: skip

# Seconds per duration unit; a month and a year are the Gregorian averages (30.436875 and 365.2425 days).
DURATION_UNITS = {
    "second": 1, "sec": 1, "s": 1, "minute": 60, "min": 60, "m": 60, "hour": 3600, "hr": 3600, "h": 3600,
    "day": 86400, "week": 604800, "fortnight": 1209600, "month": 2629746, "year": 31556952,
}  # fmt: skip

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")  # fmt: skip
MONTH_NUMBERS = {m.lower(): i + 1 for i, m in enumerate(MONTHS)} | {
    m.lower()[:3]: i + 1 for i, m in enumerate(MONTHS)
} | {"sept": 9}  # fmt: skip
HOLIDAYS = {  # year-less dates a question may name: "what day is Christmas"
    "christmas": (12, 25), "christmas day": (12, 25), "christmas eve": (12, 24), "new year's eve": (12, 31),
    "new years eve": (12, 31), "new year's day": (1, 1), "new years day": (1, 1), "new year": (1, 1),
    "halloween": (10, 31), "valentine's day": (2, 14), "valentines day": (2, 14),
}  # fmt: skip
RELATIVE_DAYS = {
    "today": 0,
    "tomorrow": 1,
    "yesterday": -1,
    "the day after tomorrow": 2,
    "the day before yesterday": -2,
}

TOKEN = re.compile(r"\d+(?:,\d{3})+(?:\.\d+)?(?!\d)|\d*\.\d+|\d+|[a-z]+(?:'[a-z]+)?|[-+]")
DIGIT_LETTER = re.compile(r"(?<=\d)(?=[a-z])|(?<=[a-z])-(?=[a-z])|(?<=\d)-(?=[a-z])")


def tokens(text: str) -> list[str]:
    """Lower-case words, numbers ("1,234", "3.5") and signs; "5min" and "10-year" come apart, "twenty-five" too."""
    return TOKEN.findall(DIGIT_LETTER.sub(" ", text.lower()))


def _digits(token: str) -> Fraction | None:
    text = token.replace(",", "")
    if len(text) > MAX_DIGITS or not re.fullmatch(r"\d*\.?\d+", text):
        return None
    return Fraction(text)


def _words(words: list[str], i: int) -> tuple[Fraction, int] | None:
    """A number in words from ``words[i]``: "one hundred and five", "twenty five thousand", "a hundred"."""
    total = current = 0
    start, last, big = i, None, 0  # last: the previous word's kind (one, ten, hundred, big); big: the last scale
    if i + 1 < len(words) and words[i] in ("a", "an") and words[i + 1] in SCALES:
        current, last, i = 1, "one", i + 1
    while i < len(words):
        word = words[i]
        if word in ONES and last in (None, "hundred", "big") or word in ONES and last == "ten" and ONES[word] < 10:
            current, last = current + ONES[word], "one"
        elif word in TENS and last in (None, "hundred", "big"):
            current, last = current + TENS[word], "ten"
        elif word == "hundred" and last in ("one", "ten") and current < 100:
            current, last = current * 100, "hundred"
        elif (
            word in SCALES
            and word != "hundred"
            and last in ("one", "ten", "hundred")
            and SCALES[word] < (big or 10**15)
        ):
            total, current, last, big = total + current * SCALES[word], 0, "big", SCALES[word]
        elif word == "and" and last in ("hundred", "big") and i + 1 < len(words) and words[i + 1] in ONES | TENS:
            pass  # "one hundred and five"
        else:
            break
        i += 1
    return None if i == start else (Fraction(total + current), i)


def _decimals(words: list[str], i: int) -> tuple[Fraction, int]:
    """The digits spoken after "point": "three point one four"."""
    digits = ""
    while i < len(words) and words[i] in ONES and ONES[words[i]] < 10 and len(digits) < MAX_DIGITS:
        digits, i = digits + str(ONES[words[i]]), i + 1
    return (Fraction(int(digits), 10 ** len(digits)) if digits else Fraction(0)), i


def parse_number(words: list[str], i: int = 0, signed: bool = True) -> tuple[Fraction, int] | None:
    """The number starting at ``words[i]`` and the index after it, or None: digits ("1,234", "3.5", "5 thousand"),
    words ("twenty five", "three point five"), "and a half"/"and a quarter" after either, and with ``signed`` a
    leading "minus"/"negative"/"-"."""
    sign = 1
    if signed and i < len(words) and words[i] in ("minus", "negative", "-"):
        sign, i = -1, i + 1
    if i >= len(words):
        return None
    value = _digits(words[i])
    if value is not None:
        i += 1
        if i < len(words) and words[i] in SCALES:  # "5 thousand", "2.5 million"
            value, i = value * SCALES[words[i]], i + 1
    else:
        found = _words(words, i)
        if found is None:
            return None
        value, i = found
        if i + 1 < len(words) and words[i] == "point" and words[i + 1] in ONES:
            decimals, i = _decimals(words, i + 1)
            value += decimals
    if i + 2 < len(words) and words[i] == "and" and words[i + 1] in ("a", "one") and words[i + 2] in FRACTIONS:
        value, i = value + FRACTIONS[words[i + 2]], i + 3
    return sign * value, i


def number(text: str) -> Fraction | None:
    """``text`` as one number ("3.5", "minus forty", "two and a half"), or None when it is anything else."""
    words = tokens(text)
    found = parse_number(words)
    return found[0] if found and found[1] == len(words) else None


def quantity(text: str) -> tuple[Fraction, str] | None:
    """A number and what follows it: "3 inches" -> (3, "inches"), "2.5km" -> (5/2, "km"), "a pound" -> (1, "pound"),
    "minus forty degrees" -> (-40, "degrees"); None without both."""
    words = re.sub(r"(?<=\d)(?=[^\d\s.,])", " ", text.strip()).split()
    if len(words) > 1 and words[0].lower() in ("a", "an") and words[1].lower() not in SCALES:
        return Fraction(1), " ".join(words[1:])
    for size in range(min(len(words) - 1, 8), 0, -1):
        value = number(" ".join(words[:size]))
        if value is not None:
            return value, " ".join(words[size:])
    return None


def _duration_unit(word: str) -> int | None:
    if word in DURATION_UNITS:
        return DURATION_UNITS[word]
    return DURATION_UNITS.get(word[:-1]) if word.endswith("s") and len(word) > 2 else None


def _amount(words: list[str], i: int) -> tuple[Fraction, int] | None:
    """How many of the unit that follows: a number, "a"/"an", "half (an)", "a quarter (of an)"."""
    found = parse_number(words, i, signed=False)
    if found is not None:
        return found
    j, value = i, Fraction(1)
    if j < len(words) and words[j] in ("a", "an") and j + 1 < len(words) and words[j + 1] in FRACTIONS:
        j += 1
    if j < len(words) and words[j] in FRACTIONS:
        value, j = FRACTIONS[words[j]], j + 1
        j += 1 if j < len(words) and words[j] == "of" else 0
        j += 1 if j < len(words) and words[j] in ("a", "an") else 0
        return value, j
    if j < len(words) and words[j] in ("a", "an"):
        return value, j + 1
    return None


def parse_duration(text: str) -> Fraction | None:
    """Seconds in a spoken duration ("two and a half hours", "an hour and a half", "1 minute 30 seconds",
    "5-minute", "minus 5 seconds", "10 years"), exactly; None when ``text`` is anything else."""
    words = tokens(text)
    sign, i, total, parts = 1, 0, Fraction(0), 0
    if words and words[0] in ("minus", "negative", "-"):
        sign, i = -1, 1
    while i < len(words):
        if parts and words[i] in ("and", "plus"):
            i += 1
        found = _amount(words, i)
        if found is None or found[1] >= len(words) or (unit := _duration_unit(words[found[1]])) is None:
            return None
        value, i = found[0] * unit, found[1] + 1
        if i + 2 < len(words) and words[i] == "and" and words[i + 1] in ("a", "one") and words[i + 2] in FRACTIONS:
            value, i = value + FRACTIONS[words[i + 2]] * unit, i + 3
        total, parts = total + value, parts + 1
    return sign * total if parts else None


CLOCK_DIGITS = re.compile(r"(\d{1,2})(?:[:.h ](\d{2}))?")
MERIDIEM = {"am": "am", "pm": "pm", "morning": "am", "afternoon": "pm", "evening": "pm", "night": "pm", "tonight": "pm"}
FILLER = {"at", "for", "on", "in", "the", "tomorrow", "today", "oclock", "sharp", "exactly", "this", "please"}


def _relative_clock(words: list[str]) -> tuple[int, int] | None:
    """ "half past six", "a quarter to eight", "ten (minutes) past seven": the last two words are past/to and an hour."""
    hour = number(words[-1])
    if words[:-2] in (["half"], ["quarter"], ["a", "half"], ["a", "quarter"]):
        minutes = Fraction(30 if "half" in words else 15)
    else:
        found = parse_number(words[:-2], 0, signed=False)
        rest = words[found[1] : -2] if found else None
        minutes = found[0] if found and rest in ([], ["minute"], ["minutes"]) else None
    if hour is None or minutes is None or hour.denominator != 1 or minutes not in range(1, 60):
        return None
    if words[-2] in ("past", "after"):
        return int(hour), int(minutes)
    return (int(hour) - 1) % 24, 60 - int(minutes)


def _clock_words(words: list[str]) -> tuple[int, int] | None:
    """Hour and minute in words: "seven", "seven thirty", "seven oh five", "half past six", "quarter to eight"."""
    if words in (["noon"], ["midday"]):
        return 12, 0
    if words == ["midnight"]:
        return 0, 0
    if len(words) >= 3 and words[-2] in ("past", "after", "to", "before"):
        return _relative_clock(words)
    found = parse_number(words, 0, signed=False)
    if found is None or found[0].denominator != 1:
        return None
    hour, i = int(found[0]), found[1]
    if i == len(words):
        return hour, 0
    minute = parse_number(words, i + (words[i] in ("oh", "o")), signed=False)  # "seven oh five"
    if minute is None or minute[1] != len(words) or minute[0].denominator != 1:
        return None
    return hour, int(minute[0])


def parse_clock_time(text: str) -> str | None:
    """A time of day as "HH:MM" (24 h; out-of-range values pass through for the caller to refuse), or None:
    "7:30", "7.30 a.m.", "7 pm", "19:45", "seven thirty in the evening", "half past six", "noon"."""
    clean = re.sub(r"\b([ap])\.?\s?m\b\.?", r"\1m", text.lower()).replace("o'clock", "oclock")
    words, meridiem = [], None
    for word in re.findall(r"\d{1,2}[:.h]\d{2}|\d+|[a-z]+", clean):
        if word in MERIDIEM:
            meridiem = meridiem or MERIDIEM[word]
        elif word not in FILLER:
            words.append(word)
    if not words:
        return None
    digits = CLOCK_DIGITS.fullmatch(" ".join(words))
    if digits:
        hour, minute = int(digits[1]), int(digits[2] or 0)
    elif (found := _clock_words(words)) is not None:
        hour, minute = found
    else:
        return None
    if meridiem and 1 <= hour <= 12:
        hour = hour % 12 + (12 if meridiem == "pm" else 0)
    return f"{hour % 100:02d}:{minute % 100:02d}" if hour < 100 and minute < 100 else None


def _day_of_month(words: list[str]) -> int | None:
    text = " ".join(words)
    if m := re.fullmatch(r"(\d{1,2})(?:st|nd|rd|th)?", text.replace(" ", "")):
        return int(m[1])
    if len(words) == 2 and words[0] in TENS and words[1] in ORDINALS and ORDINALS[words[1]] < 10:
        return TENS[words[0]] + ORDINALS[words[1]]
    return ORDINALS.get(text)


def _month_day(words: list[str]) -> tuple[int, int] | None:
    """ "december 25", "25 december", "the 25th of december", "december the twenty fifth"."""
    words = [w for w in words if w not in ("the", "of")]
    for i, word in enumerate(words):
        if word in MONTH_NUMBERS:
            rest = words[:i] + words[i + 1 :]
            day = _day_of_month(rest) if rest else None
            return (MONTH_NUMBERS[word], day) if day else None
    return None


def parse_day(text: str, today: date) -> str | None:
    """A spoken day as "today", "tomorrow", "yesterday" or "YYYY-MM-DD" (a date without a year: its next
    occurrence from ``today``), or None. Impossible dates ("February 30") come back as they are, for the caller to
    refuse in words."""
    clean = re.sub(r"\s+", " ", re.sub(r"[,?.!]", " ", text.lower())).strip()
    clean = re.sub(r"^(on )|( this year)$", "", clean)
    if clean in RELATIVE_DAYS:
        offset = RELATIVE_DAYS[clean]
        return clean if -1 <= offset <= 1 else (today + timedelta(days=offset)).isoformat()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", clean):
        return clean
    words, year = clean.split(), None
    if words and re.fullmatch(r"\d{1,4}", words[-1]) and len(words) > 1 and int(words[-1]) > 31:
        year, words = int(words[-1]), words[:-1]
    key = " ".join(words)
    month_day = HOLIDAYS.get(key) or _month_day(words)
    if month_day is None:
        return None
    month, day = month_day
    if year is None:
        year = today.year
        if (month, day) < (today.month, today.day):
            year += 1
    return f"{year:04d}-{month:02d}-{day:02d}"
