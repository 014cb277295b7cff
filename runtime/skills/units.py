"""Unit conversion over a compact table of common units, exactly (fractions.Fraction factors from the units'
definitions: an inch is 2.54 cm, a pound 0.45359237 kg, a US gallon 231 cubic inches).

Chosen over pint (0.25: 5.2 MB with its dependencies, 0.43 s to import and build its registry on the development
machine, float results, and no spoken aliases such as "miles an hour"): this table loads in microseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction as F

from edgemm.runtime.skills.calls import SkillError


@dataclass(frozen=True)
class Unit:
    key: str  # the singular name, also the table's key
    plural: str
    dimension: str  # "length", "mass", ...
    factor: F  # base units per unit (a temperature: kelvin per degree)
    offset: F = F(0)  # a temperature: kelvin = (value + offset) * factor


INCH, POUND, GALLON = F(254, 10000), F(45359237, 10**8), F(3785411784, 10**12)  # metres, kilograms, cubic metres
UNITS: dict[str, Unit] = {}
ALIASES: dict[str, str] = {}  # every spoken or written name (lower case) -> Unit.key


def _add(dimension: str, factor, names: str, offset=F(0)) -> None:
    """``names``: "singular|plural|alias|alias..."."""
    singular, plural, *aliases = names.split("|")
    UNITS[singular] = Unit(singular, plural, dimension, F(factor), F(offset))
    for alias in (singular, plural, *aliases):
        ALIASES[alias] = singular


for _factor, _names in (
    (F(1, 1000), "millimeter|millimeters|millimetre|millimetres|mm"),
    (F(1, 100), "centimeter|centimeters|centimetre|centimetres|cm"),
    (1, "meter|meters|metre|metres|m"),
    (1000, "kilometer|kilometers|kilometre|kilometres|km|kms|k"),
    (INCH, "inch|inches|inchs"),
    (12 * INCH, "foot|feet|ft|foots"),
    (36 * INCH, "yard|yards|yd|yds"),
    (63360 * INCH, "mile|miles|mi"),
    (1852, "nautical mile|nautical miles|nmi"),
    (9460730472580800, "light year|light years|lightyear|lightyears|ly"),
):
    _add("length", _factor, _names)
for _factor, _names in (
    (F(1, 10**6), "milligram|milligrams|milligramme|milligrammes|mg"),
    (F(1, 1000), "gram|grams|gramme|grammes|g"),
    (1, "kilogram|kilograms|kilogramme|kilogrammes|kg|kgs|kilo|kilos"),
    (1000, "tonne|tonnes|metric ton|metric tons|t"),
    (POUND / 16, "ounce|ounces|oz"),
    (POUND, "pound|pounds|lb|lbs"),
    (14 * POUND, "stone|stone|stones|st"),
):
    _add("mass", _factor, _names)
for _factor, _names in (
    (F(1, 10**6), "milliliter|milliliters|millilitre|millilitres|ml"),
    (F(1, 10**5), "centiliter|centiliters|centilitre|centilitres|cl"),
    (F(1, 10**4), "deciliter|deciliters|decilitre|decilitres|dl"),
    (F(1, 1000), "liter|liters|litre|litres|l"),
    (1, "cubic meter|cubic meters|cubic metre|cubic metres|m3|m³"),
    (GALLON / 768, "teaspoon|teaspoons|tsp"),
    (GALLON / 256, "tablespoon|tablespoons|tbsp"),
    (GALLON / 128, "fluid ounce|fluid ounces|fl oz|floz"),
    (GALLON / 16, "cup|cups"),
    (GALLON / 8, "pint|pints|pt"),
    (GALLON / 4, "quart|quarts|qt"),
    (GALLON, "gallon|gallons|gal|us gallon|us gallons"),
    (F(454609, 10**8), "imperial gallon|imperial gallons"),
    (F(56826125, 10**11), "imperial pint|imperial pints"),
):
    _add("volume", _factor, _names)
for _factor, _names in (
    (1, "meter per second|meters per second|metres per second|m/s|mps"),
    (
        F(1000, 3600),
        "kilometer per hour|kilometers per hour|kilometres per hour|kilometers an hour|"
        "kilometres an hour|km/h|kmh|kph|km per hour",
    ),  # fmt: skip
    (63360 * INCH / 3600, "mile per hour|miles per hour|miles an hour|mph"),
    (F(1852, 3600), "knot|knots|kn|kt"),
    (12 * INCH, "foot per second|feet per second|fps|ft/s"),
):
    _add("speed", _factor, _names)
for _factor, _names in (
    (F(1, 1000), "millisecond|milliseconds|ms"),
    (1, "second|seconds|sec|secs|s"),
    (60, "minute|minutes|min|mins"),
    (3600, "hour|hours|hr|hrs|h"),
    (86400, "day|days"),
    (604800, "week|weeks"),
    (2629746, "month|months"),  # the Gregorian average, 30.436875 days
    (31556952, "year|years"),  # 365.2425 days
):
    _add("time", _factor, _names)
for _factor, _names in (
    (F(1, 8), "bit|bits"),
    (1, "byte|bytes"),
    (1000, "kilobyte|kilobytes|kb"),
    (10**6, "megabyte|megabytes|mb|megs"),
    (10**9, "gigabyte|gigabytes|gb|gigs"),
    (10**12, "terabyte|terabytes|tb"),
    (10**15, "petabyte|petabytes|pb"),
    (2**10, "kibibyte|kibibytes|kib"),
    (2**20, "mebibyte|mebibytes|mib"),
    (2**30, "gibibyte|gibibytes|gib"),
    (2**40, "tebibyte|tebibytes|tib"),
    (125, "kilobit|kilobits|kbit|kbps"),
    (125000, "megabit|megabits|mbit|mbps"),
    (125 * 10**6, "gigabit|gigabits|gbit|gbps"),
):
    _add("data size", _factor, _names)
for _factor, _names in (
    (F(1, 10**4), "square centimeter|square centimeters|square centimetre|square centimetres|cm2|cm²"),
    (1, "square meter|square meters|square metre|square metres|m2|m²|sqm"),
    (10**6, "square kilometer|square kilometers|square kilometre|square kilometres|km2|km²"),
    (INCH**2, "square inch|square inches|sq in"),
    ((12 * INCH) ** 2, "square foot|square feet|sq ft|sqft|ft2|ft²"),
    ((36 * INCH) ** 2, "square yard|square yards|sq yd"),
    ((63360 * INCH) ** 2, "square mile|square miles|sq mi"),
    (4840 * (36 * INCH) ** 2, "acre|acres"),
    (10**4, "hectare|hectares|ha"),
):
    _add("area", _factor, _names)
for _factor, _names in (
    (1, "joule|joules|j"),
    (1000, "kilojoule|kilojoules|kj"),
    (F(4184, 1000), "calorie|calories|cal"),
    (4184, "kilocalorie|kilocalories|kcal"),
    (3600, "watt hour|watt hours|wh"),
    (3600000, "kilowatt hour|kilowatt hours|kwh"),
):
    _add("energy", _factor, _names)
_add("temperature", 1, "degree Celsius|degrees Celsius|celsius|centigrade|c|°c", offset=F(27315, 100))
_add("temperature", F(5, 9), "degree Fahrenheit|degrees Fahrenheit|fahrenheit|f|°f", offset=F(45967, 100))
_add("temperature", 1, "kelvin|kelvin|kelvins|k|°k")
ALIASES.pop("k")  # "k" is a kilometre ("a 5 k run") before it is a kelvin
ALIASES["k"] = "kilometer"


def unit(name: str) -> Unit:
    """The unit called ``name`` ("km", "miles per hour", "degrees F"); SkillError when there is none."""
    if not isinstance(name, str):
        raise SkillError("A unit must be given by its name.")
    key = re.sub(r"\s+", " ", name.strip().lower().replace(".", ""))
    key = re.sub(r"^(a|an|one|the)\s+|^degrees?\s+(?=\w)|^deg\s+", "", key)
    found = ALIASES.get(key) or ALIASES.get(key.replace("degrees ", "").replace("degree ", ""))
    if found is None:
        shown = " ".join(name.split())[:40]
        raise SkillError(f"I do not know a unit called {shown}." if shown else "A unit must be given by its name.")
    return UNITS[found]


def convert(value: F, source: Unit, target: Unit) -> F:
    """``value`` in ``source`` units expressed in ``target`` units, exactly."""
    if source.dimension != target.dimension:
        raise SkillError(
            f"I cannot convert {source.plural} to {target.plural}: one is a {source.dimension}, "
            f"the other a {target.dimension}."
        )
    base = (value + source.offset) * source.factor
    if source.dimension == "temperature" and base < 0:
        raise SkillError("That is below absolute zero, the lowest temperature there is.")
    return base / target.factor - target.offset


def say(value_text: str, unit: Unit) -> str:
    """ "1 mile", "8.0467 kilometers"."""
    return f"{value_text} {unit.key if value_text in ('1', '-1') else unit.plural}"
