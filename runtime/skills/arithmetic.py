"""Exact arithmetic on spoken or typed expressions: "17 times 23", "1,234 plus 5,678", "2^10", "the square root
of 144", "15 percent of 80", "(2 + 3) * 4".

Words become Python operator syntax with each number replaced by a name (n0, n1...), Python's own parser builds the
tree (ast), and a whitelist evaluator computes it with fractions.Fraction -- never eval. Bounded before parsing
(200 characters, 20 levels of parentheses) and at every step (no value over 100 digits; a power's size is estimated
before it is computed), so "9**9**9" is refused in microseconds.

Results: integers as they are ("391"); other values rounded to 4 decimals ("2.5", "0.3333"), or to 4 significant
digits when that would show 0 ("0.00003333"), said with "about" when rounded.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal
from fractions import Fraction

from edgemm.runtime.skills.calls import SkillError
from edgemm.runtime.skills.numbers import parse_number

MAX_CHARS = 200
MAX_NESTING = 20
MAX_DIGITS = 100  # numerators and denominators: a bigger value is refused
MAX_BITS = int(MAX_DIGITS * math.log2(10)) + 1
DECIMALS = 4

TOO_LARGE = "That number is too large for me to compute exactly."
TOO_SMALL = "That number is too small for me to compute exactly."
UNREADABLE = "I could not read that as a calculation."

SQRT, PERCENT, PERCENT_OF, HUGE = "sqrt", "%pc", "%of", "huge"  # HUGE: a number written with over MAX_DIGITS digits
SYMBOLS = {"×": "*", "·": "*", "⋅": "*", "✕": "*", "÷": "/", "−": "-", "–": "-", "^": "**", "√": " sqrt ",
           "²": "**2", "³": "**3"}  # fmt: skip
PHRASES = {  # spoken operators, longest first
    ("raised", "to", "the", "power", "of"): "**", ("to", "the", "power", "of"): "**", ("the", "square", "root", "of"): SQRT,
    ("square", "root", "of"): SQRT, ("multiplied", "by"): "*", ("divided", "by"): "/", ("per", "cent", "of"): PERCENT_OF,
    ("percent", "of"): PERCENT_OF, ("raised", "to"): "**", ("per", "cent"): PERCENT, ("percent",): PERCENT,
    ("plus",): "+", ("minus",): "-", ("negative",): "-", ("times",): "*", ("x",): "*", ("over",): "/",
    ("mod",): "%", ("modulo",): "%", ("squared",): "**2", ("cubed",): "**3", ("sqrt",): SQRT,
}  # fmt: skip
LONGEST = max(map(len, PHRASES))
BINARY = ("+", "-", "*", "/", "//", "%", "**")
SPOKEN = {"+": "plus", "-": "minus", "*": "times", "/": "divided by", "//": "floor-divided by",
          "%": "modulo", "**": "to the power of", "**2": "squared", "**3": "cubed", SQRT: "the square root of",
          PERCENT: "percent", PERCENT_OF: "percent of"}  # fmt: skip
TOKEN = re.compile(r"\d+(?:,\d{3})+(?!\d)|\d*\.\d+|\d+|\*\*|//|[-+*/%()]|[a-z]+|\S")


@dataclass(frozen=True)
class Calculation:
    value: Fraction
    text: str  # the value as said: "391", "0.3333"
    exact: bool  # False when ``text`` is rounded (or a root was approximated)
    spoken: str | None  # the expression in words ("17 times 23"), None when it has parentheses
    source: str  # the Python syntax evaluated, numbers as written: "17*23"


def _lex(text: str) -> list[str] | None:
    for symbol, replacement in SYMBOLS.items():
        text = text.replace(symbol, replacement)
    text = re.sub(r"[\s?!.=]+$", "", text.lower().strip())
    text = re.sub(r"\s+(equals?|equal to|is)$", "", text)
    words = TOKEN.findall(text)
    return None if not words or any(len(w) == 1 and not (w.isalnum() or w in "-+*/%()") for w in words) else words


def _items(words: list[str]) -> list | None:
    """Numbers (Fraction) and operator symbols, or None when a word is neither."""
    items, i = [], 0
    while i < len(words):
        word = words[i]
        if word == "%":
            nxt = words[i + 1] if i + 1 < len(words) else None
            if nxt == "of":
                items.append(PERCENT_OF)
                i += 2
                continue
            items.append("%" if nxt is not None and (nxt == "(" or parse_number(words, i + 1, False)) else PERCENT)
        elif word in ("+", "-", "*", "/", "//", "**", "(", ")"):
            items.append(word)
        elif word[0] in "0123456789." and len(word.replace(",", "")) > MAX_DIGITS:
            items.append(HUGE)
        elif (found := parse_number(words, i, signed=False)) is not None:
            items.append(found[0])
            i = found[1]
            continue
        else:
            for size in range(min(LONGEST, len(words) - i), 0, -1):
                if (symbol := PHRASES.get(tuple(words[i : i + size]))) is not None:
                    items.append(symbol)
                    i += size
                    break
            else:
                return None
            continue
        i += 1
    return items


def _is_operation(items: list) -> bool:
    """A binary operator after a value, a root, a square or a percentage: "minus 5" alone is no calculation."""
    for prev, item in zip([None, *items], items, strict=False):
        if item in (SQRT, PERCENT, PERCENT_OF, "**2", "**3"):
            return True
        if item in BINARY and (isinstance(prev, Fraction) or prev in (")", PERCENT, "**2", "**3", HUGE)):
            return True
    return False


def expression(text: str) -> list | None:
    """The items of ``text`` when it is an arithmetic expression with an operation, else None (no error)."""
    if not isinstance(text, str) or len(text) > MAX_CHARS:
        return None
    words = _lex(text)
    items = _items(words) if words else None
    return items if items and _is_operation(items) else None


def _atom(items: list, i: int, names: list) -> tuple[str, int]:
    """The Python source of the operand starting at ``items[i]``: a number, a bracket, or a sign/root before one."""
    if i >= len(items):
        raise SkillError(UNREADABLE)
    item = items[i]
    if item in ("-", "+"):
        inner, end = _atom(items, i + 1, names)
        return f"({item}{inner})", end
    if item == SQRT:
        inner, end = _atom(items, i + 1, names)
        return f"sqrt({inner})", end
    if item == "(":
        depth, j = 0, i
        while j < len(items):
            depth += (items[j] == "(") - (items[j] == ")")
            if depth == 0:
                return f"({_source(items[i + 1 : j], names)})", j + 1
            j += 1
        raise SkillError(UNREADABLE)
    if isinstance(item, Fraction):
        names.append(item)
        return f"n{len(names) - 1}", i + 1
    raise SkillError(TOO_LARGE if item == HUGE else UNREADABLE)


def _source(items: list, names: list) -> str:
    out, i = [], 0
    while i < len(items):
        item = items[i]
        if item in (SQRT, "(", HUGE) or isinstance(item, Fraction):
            atom, i = _atom(items, i, names)
            out.append(atom)
            continue
        out.append({PERCENT: "/100", PERCENT_OF: "/100*"}.get(item, item) if isinstance(item, str) else "")
        i += 1
    return "".join(out)


def _spoken(items: list) -> str | None:
    if "(" in items:
        return None
    words = [format_number(item)[0] if isinstance(item, Fraction) else SPOKEN.get(item, item) for item in items]
    return " ".join(words)


def calculate(text: str) -> Calculation:
    """Evaluate ``text`` exactly; every problem (unreadable, too long, too large, division by zero) is a
    SkillError with one sentence."""
    if not isinstance(text, str) or not text.strip():
        raise SkillError(UNREADABLE)
    if len(text) > MAX_CHARS:
        raise SkillError(f"That calculation is too long for me; the limit is {MAX_CHARS} characters.")
    words = _lex(text)
    items = _items(words) if words else None
    if not items:
        raise SkillError(UNREADABLE)
    depth = 0
    for item in items:
        depth += (item == "(") - (item == ")")
        if depth > MAX_NESTING:
            raise SkillError(f"That calculation has more than {MAX_NESTING} levels of parentheses.")
    names: list[Fraction] = []
    source = _source(items, names)
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise SkillError(UNREADABLE) from None
    value, exact = _evaluate(tree.body, names)
    text_value, rounded = format_number(value)
    shown = re.sub(r"n(\d+)", lambda m: format_number(names[int(m[1])])[0], source)
    return Calculation(value, text_value, exact and not rounded, _spoken(items), shown)


def _evaluate(node: ast.AST, names: list[Fraction]) -> tuple[Fraction, bool]:
    """(value, exact) of a parsed node, allowing numbers, + - * / // % **, signs and sqrt() only."""
    if isinstance(node, ast.Name) and re.fullmatch(r"n\d+", node.id):
        return names[int(node.id[1:])], True
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return bounded(Fraction(node.value)), True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value, exact = _evaluate(node.operand, names)
        return (-value if isinstance(node.op, ast.USub) else value), exact
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == SQRT and len(node.args) == 1:
        value, exact = _evaluate(node.args[0], names)
        root, root_exact = power(value, Fraction(1, 2))
        return root, exact and root_exact
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left, left_exact = _evaluate(node.left, names)
        right, right_exact = _evaluate(node.right, names)
        value, exact = OPERATORS[type(node.op)](left, right)
        return bounded(value), exact and left_exact and right_exact
    raise SkillError(UNREADABLE)


def bounded(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS:
        raise SkillError(TOO_LARGE)
    if value.denominator.bit_length() > MAX_BITS:
        raise SkillError(TOO_SMALL)
    return value


def _divisor(value: Fraction) -> Fraction:
    if value == 0:
        raise SkillError("I cannot divide by zero.")
    return value


def _integer_root(n: int, k: int) -> int | None:
    root = round(n ** (1 / k)) if n.bit_length() < 1000 else None
    return next((r for r in (root - 1, root, root + 1) if r >= 0 and r**k == n), None) if root is not None else None


def power(base: Fraction, exponent: Fraction) -> tuple[Fraction, bool]:
    """``base ** exponent`` exactly when it is rational (2**10, 16**0.5, 8**(1/3)), else a float's value
    (not exact); refuses a result over MAX_DIGITS from the operands' sizes, before computing it."""
    if exponent.denominator == 1:
        e = exponent.numerator
        if base == 0 and e < 0:
            raise SkillError("I cannot divide by zero.")
        if base in (0, 1) or e == 0:
            return base**0 if e == 0 else base, True
        if base == -1:
            return Fraction(-1 if e % 2 else 1), True
        bits = max(base.numerator.bit_length(), base.denominator.bit_length())  # 1 only for 1 and -1
        if (bits - 1) * abs(e) > MAX_BITS:
            raise SkillError(TOO_LARGE if (abs(base) > 1) == (e > 0) else TOO_SMALL)
        return bounded(base**e), True
    if base < 0:
        raise SkillError("That has no real answer: I cannot take an even root of a negative number.")
    k = exponent.denominator
    if k <= 64:
        num, den = _integer_root(base.numerator, k), _integer_root(base.denominator, k)
        if num is not None and den is not None:
            return power(Fraction(num, den), Fraction(exponent.numerator))
    try:
        result = math.pow(float(base), float(exponent))
    except (OverflowError, ValueError):
        raise SkillError(TOO_LARGE) from None
    if not math.isfinite(result):
        raise SkillError(TOO_LARGE)
    return bounded(Fraction(repr(result))), False


OPERATORS = {
    ast.Add: lambda a, b: (a + b, True),
    ast.Sub: lambda a, b: (a - b, True),
    ast.Mult: lambda a, b: (a * b, True),
    ast.Div: lambda a, b: (a / _divisor(b), True),
    ast.FloorDiv: lambda a, b: (Fraction(a // _divisor(b)), True),
    ast.Mod: lambda a, b: (a % _divisor(b), True),
    ast.Pow: power,
}


def format_number(value: Fraction) -> tuple[str, bool]:
    """(text, rounded): "391"; "2.5"; "0.3333" (4 decimals); "0.00003333" (4 significant digits when 4 decimals
    would say 0); never an exponent."""
    if value.denominator == 1:
        return str(value.numerator), False
    context = Context(prec=2 * MAX_DIGITS + 20, rounding=ROUND_HALF_UP)
    exact = context.divide(Decimal(value.numerator), Decimal(value.denominator))
    shown = exact.quantize(Decimal(1).scaleb(-DECIMALS), context=context)
    if shown == 0:
        shown = exact.quantize(Decimal(1).scaleb(exact.adjusted() - 3), context=context)
    text = format(shown.normalize(context), "f")
    return text, Fraction(shown) != value
