"""``edgemm eval``'s question set and its scorer: the versioned questions of ``eval_questions.json`` (facts,
arithmetic, short instructions, photos), loaded and checked, and :func:`score`, which decides an answer with no
judgement by hand: one of the accepted answers as whole words (case-insensitive; a number in digits or in words),
none of the forbidden ones, at most ``max_words`` words where an instruction sets a limit.

It checks for the right words, not for everything else an answer says: a right answer followed by a wrong claim
passes. The report lists every answer so that a reader can see this.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgemm.runtime.errors import EdgemmError

QUESTIONS = Path(__file__).resolve().with_name("eval_questions.json")
CATEGORIES = ("facts", "arithmetic", "instructions", "photos")
GROUNDED = ("skills", "tools", "memory")  # bench/grounded.py: not in the question file
MAX_TOKENS = 48  # per answer: every accepted answer fits in a sentence; a rambling answer is cut here
# scikit-image sample photos the questions may name (skimage.data.NAME(); a stereo pair gives its left image).
PHOTOS = ("chelsea", "coffee", "astronaut", "stereo_motorcycle", "rocket", "page", "text", "camera")

# ---- scoring -------------------------------------------------------------------------------------------------

UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen".split()
UNITS += ["seventeen", "eighteen", "nineteen"]
TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
NUMBER_WORDS = {**{w: i for i, w in enumerate(UNITS)}, **TENS}
SCALES = {"hundred": 100, "thousand": 1000}
TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+")


def _fits(current: int, value: int) -> bool:
    """Whether ``value`` (0-90) can follow ``current`` in one number: twenty + four, hundred + twelve, not four + two."""
    if current == 0:
        return True
    low = current % 100
    return value >= 10 and low == 0 or value < 10 and value and low % 10 == 0 and not 10 <= low < 20


def _joined_numbers(words: list[str]) -> list[str]:
    """Runs of number words as one token of digits: eighty four -> 84, one hundred and five -> 105."""
    out: list[str] = []
    total = current = 0
    in_number = False

    def flush():
        nonlocal total, current, in_number
        if in_number:
            out.append(str(total + current))
        total = current = 0
        in_number = False

    for i, word in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if word in NUMBER_WORDS:
            if in_number and not _fits(current, NUMBER_WORDS[word]):
                flush()
            current += NUMBER_WORDS[word]
            in_number = True
        elif word in SCALES and in_number:
            if SCALES[word] == 100:
                current = max(current, 1) * 100
            else:
                total, current = total + max(current, 1) * 1000, 0
        elif word == "and" and in_number and (nxt in NUMBER_WORDS):
            continue
        else:
            flush()
            out.append(word)
    flush()
    return out


def words(text: str) -> list[str]:
    """Lower-case words of ``text``, numbers as digits whether written in digits or words ("1,000" -> "1000")."""
    tokens = [t.replace(",", "") if t[0].isdigit() else t for t in TOKEN.findall(text.lower().replace("’", "'"))]
    return _joined_numbers(tokens)


def _contains(haystack: list[str], phrase: list[str]) -> bool:
    n = len(phrase)
    return n > 0 and any(haystack[i : i + n] == phrase for i in range(len(haystack) - n + 1))


@dataclass(frozen=True)
class Verdict:
    passed: bool
    why: str  # what decided it: the accepted answer found, the forbidden word, the word count


def score(answer: str, accepted: list[str], forbidden: list[str] = (), max_words: int | None = None) -> Verdict:
    """An answer passes when it holds one of the ``accepted`` answers as whole words (case-insensitive; numbers as
    digits or words), none of the ``forbidden`` ones, and at most ``max_words`` words when that is set."""
    said = words(answer)
    for bad in forbidden:
        if _contains(said, words(bad)):
            return Verdict(False, f"forbidden {bad!r}")
    if max_words is not None and len(said) > max_words:
        return Verdict(False, f"{len(said)} words, at most {max_words} asked")
    found = next((good for good in accepted if _contains(said, words(good))), None)
    return Verdict(True, f"{found!r}") if found is not None else Verdict(False, "no accepted answer")


# ---- the question set ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    id: str
    category: str  # one of CATEGORIES
    question: str
    accepted: list[str]  # alternatives: one is enough
    forbidden: list[str] = field(default_factory=list)  # any one fails the answer
    max_words: int | None = None  # an instruction's word limit
    image: str | None = None  # photos: a name in PHOTOS
    note: str | None = None  # why the accepted answers are what they are

    def score(self, answer: str) -> Verdict:
        return score(answer, self.accepted, self.forbidden, self.max_words)


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(s, str) and words(s) for s in value)


def _question(entry, where: str) -> Question:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        raise EdgemmError(f"{where}: each question needs an 'id'")
    where = f"{where}: question {entry['id']!r}"
    unknown = set(entry) - set(Question.__dataclass_fields__)
    if unknown:
        raise EdgemmError(f"{where} has unknown fields {sorted(unknown)}")
    checks = [
        (entry.get("category") in CATEGORIES, f"category must be one of {', '.join(CATEGORIES)}"),
        (isinstance(entry.get("question"), str) and entry["question"].strip(), "question must be a text"),
        (_strings(entry.get("accepted")) and entry["accepted"], "accepted must be a list of answers"),
        (_strings(entry.get("forbidden", [])), "forbidden must be a list of words"),
        (entry.get("max_words") is None or isinstance(entry["max_words"], int), "max_words must be an integer"),
        ((entry.get("image") in PHOTOS) == (entry.get("category") == "photos"), f"photos name one of {PHOTOS}"),
    ]
    for ok, expected in checks:
        if not ok:
            raise EdgemmError(f"{where}: {expected}")
    return Question(**entry)


def load_questions(path: str | Path | None = None) -> tuple[int, list[Question]]:
    """The question file's version and its questions, checked (EdgemmError naming the file and question)."""
    path = Path(path) if path else QUESTIONS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise EdgemmError(f"cannot read the question file {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgemmError(f"the question file {path} is not valid JSON ({e})") from None
    entries = data.get("questions") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise EdgemmError(f"the question file {path} has no questions")
    if not isinstance(data.get("version"), int):
        raise EdgemmError(f"the question file {path} has no integer 'version'")
    questions = [_question(entry, str(path)) for entry in entries]
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise EdgemmError(f"the question file {path} repeats an id: {sorted({i for i in ids if ids.count(i) > 1})}")
    return data["version"], questions


def select(questions: list[Question], categories: list[str] | None, limit: int | None) -> list[Question]:
    """The questions of ``categories`` (all when None), at most ``limit`` of each, in file order."""
    chosen, count = [], dict.fromkeys(CATEGORIES, 0)
    for q in questions:
        if (not categories or q.category in categories) and (limit is None or count[q.category] < limit):
            chosen.append(q)
            count[q.category] += 1
    if not chosen:
        raise EdgemmError(f"no questions of {', '.join(categories or CATEGORIES)} in the question file")
    return chosen
