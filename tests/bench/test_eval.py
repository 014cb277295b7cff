"""`edgemm eval`: the scorer, the question file, its one-line errors, and a real run on the default LLM bundle."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict

import pytest

from edgemm.bench import eval_report
from edgemm.bench.eval import summarize
from edgemm.bench.eval_questions import CATEGORIES, PHOTOS, Question, load_questions, score, select, words
from edgemm.models import presets
from edgemm.runtime.errors import EdgemmError
from tests.harness import edgemm


def _edgemm(*args, models=None, timeout=120):
    env = None if models is None else {**os.environ, "EDGEMM_MODELS": str(models)}
    return edgemm(*args, timeout=timeout, env=env)


@pytest.mark.parametrize("answer", ["84", "eighty-four", "The answer is 84.", "Eighty four.", "12 x 7 = 84"])
def test_numbers_in_digits_or_words_are_accepted(answer):
    assert score(answer, ["84"]).passed


@pytest.mark.parametrize("answer", ["72", "12 times 7 is 72.", "840", "8 4", "eighty"])
def test_other_numbers_are_rejected(answer):
    assert not score(answer, ["84"]).passed


def test_words_join_number_words_only_where_they_form_one_number():
    assert words("One hundred and five, then 1,000!") == ["105", "then", "1000"]
    assert words("one two") == ["1", "2"]  # a count, not 3
    assert words("twenty-one and a half") == ["21", "and", "a", "half"]


def test_whole_words_case_insensitive():
    assert score("The capital of France is PARIS.", ["Paris"]).passed
    assert not score("Parisian food", ["Paris"]).passed
    assert score("Carbon dioxide.", ["carbon dioxide", "CO2"]).passed
    assert score("It is T-A-C.", ["tac", "t a c"]).passed


def test_forbidden_words_fail_an_answer():
    verdict = score("Yes, a dog", ["no"], ["dog"])
    assert not verdict.passed and "dog" in verdict.why
    assert not score("There is a cat and a dog.", ["cat"], ["dog"]).passed
    assert not score("There is no one.", ["1"], ["no one"]).passed  # "one" is there, but as "no one"
    assert score("No, there is only a cat.", ["no"], ["yes"]).passed


def test_word_limit():
    assert score("Blue.", ["blue"], max_words=1).passed
    verdict = score("The sky is blue.", ["blue"], max_words=1)
    assert not verdict.passed and "4 words" in verdict.why


def test_question_file_loads_with_every_category():
    version, questions = load_questions()
    assert isinstance(version, int) and version >= 1
    counts = {c: sum(q.category == c for q in questions) for c in CATEGORIES}
    assert counts["facts"] >= 10 and counts["arithmetic"] >= 8
    assert counts["instructions"] >= 5 and counts["photos"] >= 8
    for q in questions:
        assert (q.image in PHOTOS) == (q.category == "photos"), q.id
        assert all(q.score(good).passed for good in q.accepted), q.id  # its own answers pass
        assert not any(q.score(bad).passed for bad in q.forbidden), q.id


def test_select_by_category_and_limit():
    _, questions = load_questions()
    chosen = select(questions, ["facts", "photos"], 2)
    assert [q.category for q in chosen] == ["facts", "facts", "photos", "photos"]
    assert chosen[0].question == "What is the capital of France?"


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"version": 1, "questions": []}', "has no questions"),
        ("", "is not valid JSON"),
        (
            '{"version": 1, "questions": [{"id": "x", "category": "poems", "question": "?", "accepted": ["a"]}]}',
            "category",
        ),
        (
            '{"version": 1, "questions": [{"id": "x", "category": "photos", "question": "?", "accepted": ["a"]}]}',
            "photos",
        ),
    ],
)
def test_bad_question_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "questions.json"
    path.write_text(content)
    with pytest.raises(EdgemmError, match=message):
        load_questions(path)
    out = _edgemm("eval", "--questions", str(path), "--model", str(tmp_path))
    assert out.returncode == 2 and message in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_unknown_preset_and_tampered_bundle_are_one_line_errors(tmp_path):
    out = _edgemm("eval", "--model", "no-such-model", models=tmp_path)
    assert out.returncode == 2 and "neither an llm preset" in out.stderr and out.stderr.count("\n") == 1

    name = presets()["llm"]["default"]
    out = _edgemm("eval", "--model", name, models=tmp_path)
    assert out.returncode == 2 and f"preset {name} is not built" in out.stderr

    bundle = tmp_path / "tampered"
    bundle.mkdir()
    (bundle / "tokenizer.json").write_text("{}")
    files = {"tokenizer.json": {"bytes": 2, "sha256": "0" * 64}}
    (bundle / "manifest.json").write_text(json.dumps({"format": "edgemm-bundle/1", "kind": "llm", "files": files}))
    out = _edgemm("eval", "--model", str(bundle))
    assert out.returncode == 2 and "does not match the manifest" in out.stderr and out.stderr.count("\n") == 1

    out = _edgemm("eval", models=tmp_path / "empty")
    assert out.returncode == 2 and "no llm bundle in" in out.stderr


def _worker_result(answers: dict, description: str) -> dict:
    """A worker's result as measure() returns it, with these answers."""
    rows = [
        {"id": i, "answer": a, "finish_reason": "eos", "first_token_s": 0.2, "new_tokens": 11, "decode_s": 0.5}
        for i, a in answers.items()
    ]
    return {
        "answers": rows,
        "descriptions": {"chelsea": description},
        "ocr": True,
        "peak_rss_llm_mb": 250.0,
        "peak_rss_mb": 480.0,
        "name": "x",
        "load_s": 1.0,
        "versions": {},
    }


def test_report_scores_and_lists_every_answer(tmp_path):
    questions = [
        Question("paris", "facts", "Capital of France?", ["Paris"]),
        Question("12x7", "arithmetic", "What is 12 times 7?", ["84"]),
        Question("dog", "photos", "Is there a dog?", ["no"], ["yes"], image="chelsea"),
    ]
    answers = {"paris": "Paris | France", "12x7": "seventy-two", "dog": "No.\nOnly a cat."}
    bundles = {}
    for name, description in (("a", "A cat."), ("b", "A tabby cat.")):
        bundles[name] = {"path": name, "megabytes": 140.0, **summarize(_worker_result(answers, description), questions)}
    assert bundles["a"]["scores"] == {"facts": [1, 1], "arithmetic": [0, 1], "photos": [1, 1]}
    assert bundles["a"]["overall"] == [2, 3] and bundles["a"]["decode_tok_s"] == pytest.approx(20.0)
    report = {
        "questions_file": "q.json",
        "questions_version": 1,
        "questions": [asdict(q) for q in questions],
        "threads": 2,
        "max_tokens": 48,
        "vision": "v",
        "ocr": True,
        "command": "edgemm eval",
        "date": "today",
        "machine": eval_report.machine(),
        "bundles": bundles,
        "failed": {"c": "no model bundle at c"},
    }
    table = eval_report.summary(report)
    assert "| a | 140 | 1/1 | 0/1 | - | 1/1 | 2/3 (67%) | - | - | - | - | 200 | 200 | 20.0 | 250 | 480 |" in table
    assert "c: failed: no model bundle at c" in table and "not comparable" in table  # a and b saw different photos
    eval_report.write(report, tmp_path / "docs" / "EVAL.md")
    doc = (tmp_path / "docs" / "EVAL.md").read_text()
    assert "Paris \\| France" in doc and "No.<br>Only a cat." in doc and "✗ no accepted answer" in doc
    assert "| chelsea | b | A tabby cat. |" in doc

    # A rewrite keeps the hand-written section on the default, placed after the results.
    decision = "## The default LLM\n\nChosen for its answers.\n"
    (tmp_path / "docs" / "EVAL.md").write_text(doc.replace("## Answers", decision + "\n## Answers"))
    eval_report.write(report, tmp_path / "docs" / "EVAL.md")
    rewritten = (tmp_path / "docs" / "EVAL.md").read_text()
    assert rewritten.count(decision) == 1
    assert rewritten.index("## Results") < rewritten.index(decision) < rewritten.index("## Answers")


@pytest.mark.slow
def test_real_run_on_the_default_bundle(llm_bundle, tmp_path):
    doc = tmp_path / "EVAL.md"
    name = presets()["llm"]["default"]
    out = _edgemm("eval", "--model", name, "--category", "facts", "--limit", "2", "--write", str(doc))
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith(f"| {name} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert re.fullmatch(r"[0-2]/2", cells[2]) and cells[3] == "-"  # facts scored; arithmetic not asked
    assert re.fullmatch(r"[0-2]/2 \(\d+%\)", cells[6]) and cells[7:11] == ["-"] * 4  # overall; skills... not asked
    assert float(cells[11]) > 0  # TTFT ms
    paris = next(line for line in doc.read_text().splitlines() if "What is the capital of France?" in line)
    assert "Paris" in paris.split("|")[4] and "✓" in paris
