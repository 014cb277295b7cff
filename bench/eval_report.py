"""``edgemm eval``'s report: the summary table (markdown) and the document ``--write`` writes (docs/EVAL.md), with the
machine, the command, and every answer with its verdict so that a reader can check the scoring."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from edgemm.bench.worker import package_versions
from edgemm.runtime.errors import EdgemmError

COLUMNS = (
    "bundle",
    "size MB",
    "facts",
    "arithmetic",
    "instructions",
    "photos",
    "overall",
    "skills",
    "tools",
    "tools valid",
    "memory",
    "TTFT ms",
    "photo TTFT ms",
    "decode tok/s",
    "peak RSS MB (LLM)",
    "peak RSS MB (+photos)",
)


def _proc_field(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> dict:
    """CPU model, logical cores, memory, OS and Python of this machine, with the packages that run the models."""
    memory = _proc_field("/proc/meminfo", "MemTotal")  # "24626500 kB"
    return {
        "cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(int(memory.split()[0]) / 2**20, 1) if memory else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_1min": round(os.getloadavg()[0], 2),  # other work on the machine slows every timing
        "versions": package_versions("edgemm", "onnxruntime", "numpy", "tokenizers", "rapidocr-onnxruntime"),
    }


def _cell(text) -> str:
    """``text`` fit for one markdown table cell."""
    return str(text).replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or " "


def _table(rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(_cell(c) for c in rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows[1:]]


def _number(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _fraction(pair) -> str:
    return "-" if pair is None else f"{pair[0]}/{pair[1]}"


def _row(name: str, r: dict) -> tuple:
    passed, total = r["overall"]
    return (
        name,
        _number(r["megabytes"]),
        *(_fraction(r["scores"].get(c)) for c in COLUMNS[2:6]),
        f"{passed}/{total} ({100 * passed / total:.0f}%)" if total else "-",
        *(_fraction(r["scores"].get(c)) for c in COLUMNS[7:11]),
        _number(r["ttft_ms"]),
        _number(r["photo_ttft_ms"]),
        _number(r["decode_tok_s"], 1),
        _number(r["peak_rss_llm_mb"]),
        _number(r["peak_rss_mb"]) if r["descriptions"] else "-",
    )


DIFFERENT_DESCRIPTIONS = (
    "warning: the offline route described the photos differently for different bundles (the vision code or models "
    "changed during the run): their photo scores are not comparable"
)


def _descriptions(report: dict) -> dict[str, dict]:
    """{bundle: {photo: what the offline route told its LLM}} of the bundles that answered photo questions."""
    return {name: r["descriptions"] for name, r in report["bundles"].items() if r["descriptions"]}


def summary(report: dict) -> str:
    """The table, one row per bundle, a line per bundle that failed, and a warning when the photos were described
    differently for different bundles."""
    lines = _table([COLUMNS, *(_row(name, r) for name, r in report["bundles"].items())])
    lines += [f"{name}: failed: {why}" for name, why in report["failed"].items()]
    seen = list(_descriptions(report).values())
    if any(d != seen[0] for d in seen):
        lines.append(DIFFERENT_DESCRIPTIONS)
    return "\n".join(lines)


def _answers(name: str, r: dict, questions: dict) -> list[str]:
    passed, total = r["overall"]
    rows = [("category", "question", "accepted (forbidden)", "answer", "verdict")]
    for a in r["answers"]:
        q = questions[a["id"]]
        accepted = " / ".join(q["accepted"]) + (f" (not: {', '.join(q['forbidden'])})" if q["forbidden"] else "")
        if q["max_words"] is not None:
            accepted += f"; at most {q['max_words']} word{'s' * (q['max_words'] != 1)}"
        image = f"[{q['image']}] " if q["image"] else ""
        answer = a["answer"] + (" [cut at the token limit]" if a["finish_reason"] == "length" else "")
        verdict = f"{'✓' if a['passed'] else '✗'} {a['why']}"
        rows.append((q["category"], image + q["question"], accepted, answer, verdict))
    for category, answers in r.get("grounded", {}).items():
        for a in answers:
            verdict = "✓" if a["passed"] else "✗"
            if "valid" in a:
                verdict += {True: " (valid call)", False: " (INVALID call)", None: " (no call)"}[a["valid"]]
            rows.append((category, a["question"], "(bench/grounded.py)", a["answer"], verdict))
    body = "\n".join(_table(rows))
    return [f"<details><summary>{name}: {passed}/{total} right</summary>", "", body, "", "</details>", ""]


def _machine_lines(m: dict) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    memory = f", {m['memory_gib']} GiB RAM" if m["memory_gib"] else ""
    return [
        f"- {m['cpu']}, {m['cores']} logical cores{memory}; {m['os']}, Python {m['python']}",
        f"- load average (1 min): {m['load_1min']} when the run started, {m.get('load_1min_end', '?')} when it ended "
        f"(other work on the machine slows every timing)",
        f"- {versions}",
    ]


# A section of the written report that people write, not the scorer: a rewrite keeps it, after the results.
KEPT_SECTION = "## The default LLM"


def kept_section(text: str) -> str:
    """``KEPT_SECTION`` of an earlier report, up to the next section (empty when it has none)."""
    start = text.find(KEPT_SECTION + "\n")
    if start < 0:
        return ""
    end = text.find("\n## ", start + len(KEPT_SECTION))
    return text[start : end if end >= 0 else len(text)].strip() + "\n"


def document(report: dict, kept: str = "") -> str:
    """The whole report as markdown (docs/EVAL.md); ``kept``: a hand-written section placed after the results."""
    questions = {q["id"]: q for q in report["questions"]}
    counts = {}
    for q in report["questions"]:
        counts[q["category"]] = counts.get(q["category"], 0) + 1
    vision = f"the `{report['vision']}` vision bundle" if report["vision"] else "the default vision bundle"
    vision += " and OCR (rapidocr-onnxruntime)" if report["ocr"] else " (OCR was not installed)"
    lines = [
        "# Answer quality (`edgemm eval`)",
        "",
        f"`edgemm eval` asks every LLM bundle the same {len(questions)} questions ({report['questions_file']}, "
        f"version {report['questions_version']}: "
        + ", ".join(f"{n} {c}" for c, n in counts.items())
        + ") and scores the answers automatically: an answer is right when it contains one of the question's "
        "accepted answers as whole words (case-insensitive; a number in digits or in words), none of its forbidden "
        "words, and no more words than an instruction allows. Answers are greedy, at most "
        f"{report['max_tokens']} new tokens, with `edgemm ask`'s default system prompt, on {report['threads']} "
        "threads. Photo questions (scikit-image's sample photos) take the offline route of `edgemm ask --image`: "
        f"{vision} describe the photo and the bundle answers from that description, so they measure the "
        "description as much as the LLM. The scorer checks for the right words, not for everything else an answer "
        "says: a right answer followed by a wrong claim passes (every answer is listed below).",
        "",
        "TTFT: median over the text questions of prompt prefill + first token. Photo TTFT: median over the photo "
        "questions from the photo in memory to the first token (description included). Decode: tokens per second "
        "over every answer's tokens after the first. Peak RSS: each bundle runs in its own process; its peak "
        "resident memory after the text questions (the LLM alone) and at the end (with the vision bundle and OCR). "
        "Size: the bundle's files on disk.",
        "",
        "Skills, tools and memory (bench/grounded.py) are asked of the assistant on each bundle and are not in "
        '"overall": skills (time, date and weekday in 10 phrasings each against an injected clock, 20 random 3-4 '
        "digit sums and products, timers, identity: exact sentences or numbers), tools (30 requests over six "
        'function schemas, tool_choice "required": right function and arguments; "tools valid": every call '
        "parses and validates against its schema, over the answers that returned calls), memory (a fact said in one turn, asked about in the next).",
        "",
        "## Machine",
        "",
        *_machine_lines(report["machine"]),
        "",
        "## Command",
        "",
        "```sh",
        report["command"],
        "```",
        "",
        f"Run on {report['date']}.",
        "",
        "## Results",
        "",
        summary(report),
        "",
        *([kept] if kept else []),
        "## Answers",
        "",
    ]
    for name, r in report["bundles"].items():
        lines += _answers(name, r, questions)
    return "\n".join(lines + _description_lines(_descriptions(report)))


def _description_lines(seen: dict[str, dict]) -> list[str]:
    """The offline route's description of each photo: one table, or one row per bundle where they differ."""
    if not seen:
        return []
    lines = ["## What the offline route told the LLM about each photo", ""]
    first = next(iter(seen.values()))
    if all(d == first for d in seen.values()):
        return lines + _table([("photo", "description"), *first.items()]) + [""]
    rows = [(photo, name, d.get(photo, "-")) for photo in first for name, d in seen.items()]
    return lines + [DIFFERENT_DESCRIPTIONS + ".", ""] + _table([("photo", "bundle", "description"), *rows]) + [""]


def write(report: dict, path: Path) -> None:
    path = Path(path)
    try:
        kept = kept_section(path.read_text(encoding="utf-8")) if path.is_file() else ""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(document(report, kept), encoding="utf-8")
    except OSError as e:
        raise EdgemmError(f"cannot write {path}: {e.strerror}") from None
