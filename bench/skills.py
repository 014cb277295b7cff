"""How fast the skills' matcher is: the first load (hassil, Home Assistant's intents, edgemm's templates) in a fresh
process, then the median time of one ``Skills.match`` over phrasings that match and ones that must not.

    python -m edgemm.bench.skills [--repeat 50]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

PHRASES = [
    "What time is it?", "what's the time", "What's the date today?", "What day is it today?",
    "What day of the week was July 4, 1776?", "What day is tomorrow?", "Set a timer for five minutes.",
    "Set a timer for two and a half hours.", "Set a timer for a minute and 30 seconds.",
    "Set a pasta timer for 10 minutes.", "Wake me up at 7:30 a.m.", "How much time is left on my timer?",
    "Cancel the pasta timer.", "What is 17 times 23?", "What's 1,234 plus 5,678?", "17 * 23",
    "What is the square root of 144?", "How many centimeters in 3 inches?", "Convert 5 miles to kilometers.",
    "What is 100 degrees Fahrenheit in Celsius?", "Who are you?", "What can you do?", "Which model are you?",
    "What do you see?", "Read the sign.", "What am I holding?",
]  # fmt: skip
NOT_SKILLS = [
    "What is the capital of France?", "Tell me a story about a timer.", "How are you?",
    "What time zone is Paris in?", "Is this a good idea?", "What does that mean?",
    "How long does it take to boil an egg?", "What is the meaning of life?", "Can you explain this to me?",
    "Why is the sky blue and what makes sunsets red in the evening?",
]  # fmt: skip
LOAD = "import time; t = time.perf_counter(); from edgemm.runtime.skills import matcher; matcher.load(); print(time.perf_counter() - t)"


def first_load() -> float:
    """Seconds to import the skills and build the matcher, in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, check=True, timeout=120)
    return float(out.stdout.split()[-1])


def match_times(phrases: list[str], repeat: int) -> list[float]:
    """Each phrase's median seconds for one match, after one warm-up match."""
    from edgemm.runtime.skills import Skills

    skills = Skills()
    skills.warm_up()
    medians = []
    for phrase in phrases:
        skills.match(phrase)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            skills.match(phrase)
            times.append(time.perf_counter() - start)
        medians.append(statistics.median(times))
    return medians


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50, help="matches per phrase (default: %(default)s)")
    args = parser.parse_args(argv)
    loads = sorted(first_load() for _ in range(3))
    print(f"first load: {loads[1] * 1000:.0f} ms (median of 3 fresh processes)")
    for name, phrases in (("skill phrasings", PHRASES), ("other questions", NOT_SKILLS)):
        times = match_times(phrases, args.repeat)
        print(
            f"{name}: {len(phrases)}, median {statistics.median(times) * 1000:.2f} ms, "
            f"slowest {max(times) * 1000:.2f} ms ({phrases[times.index(max(times))]!r})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
