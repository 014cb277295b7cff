"""``edgemm eval``: a quality report per LLM bundle, from a fixed question set scored automatically
(``eval_questions.json`` and ``eval_questions.score``; grounded answers of the assistant: bench/grounded.py). Each
bundle runs in its own worker process (``edgemm.bench.worker``), answering as the CLI does. What is measured and how:
docs/EVAL.md.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

from edgemm.bench.eval_questions import CATEGORIES, GROUNDED, QUESTIONS, Question, load_questions, select
from edgemm.bench.worker import package_versions, peak_rss_mb, run_worker, serve
from edgemm.models import record_eval
from edgemm.runtime.bundle import models_dir
from edgemm.runtime.errors import EdgemmError

log = logging.getLogger("edgemm.bench.eval")

WARM_UP = "Hello!"
PROGRESS = "eval-progress "  # the worker's stderr line after each answer: the parent's progress bar counts them

# ---- worker side: one bundle, one process ---------------------------------------------------------------------


def photo(name: str):
    """scikit-image's sample photo ``name`` as an array (a stereo pair: its left image)."""
    try:
        import skimage.data
    except ImportError:
        raise EdgemmError("photo questions need scikit-image: pip install 'edgemm[bench]'") from None
    image = getattr(skimage.data, name)()
    return image[0] if isinstance(image, tuple) else image


def _answer(generation, question: dict, seconds_before: float = 0.0) -> dict:
    """Run ``generation`` to its end; the answer and its timings."""
    text = generation.result().strip()
    stats = generation.stats
    print(f"{PROGRESS}{question['id']}", file=sys.stderr, flush=True)
    return {
        "id": question["id"],
        "answer": text,
        "finish_reason": generation.finish_reason,
        "first_token_s": seconds_before + stats.first_token_s,
        "new_tokens": stats.new_tokens,
        "decode_s": stats.decode_s,
    }


def _description(facts: list) -> str:
    """What the offline route told the LLM about a photo, for the report."""
    return " ".join(f.describe() if hasattr(f, "describe") else str(f) for f in facts)


def _photo_answers(lm, job: dict, questions: list[dict], options) -> tuple[list[dict], dict, bool]:
    """The photo questions' answers on the offline route, what it said about each photo, and whether OCR ran."""
    from edgemm.runtime.vision import ImageQuestion

    router = ImageQuestion.load(job["model"], job.get("vision_model"), threads=job["threads"], lm=lm)
    images = {name: photo(name) for name in dict.fromkeys(q["image"] for q in questions)}
    router.describer.facts(next(iter(images.values())))  # warm-up: the vision sessions' first run
    answers, seen = [], {}
    for q in questions:
        start = time.perf_counter()
        reply = router.ask(q["question"], [images[q["image"]]], options)
        answers.append(_answer(reply.generation, q, time.perf_counter() - start))
        seen[q["image"]] = _description(reply.facts)
    return answers, seen, getattr(router.describer, "reader", None) is not None


def measure(job: dict) -> dict:
    """One bundle's answers. The job: {"model": llm bundle folder, "vision_model": vision bundle or None,
    "questions": [Question fields], "threads": n, "max_tokens": n}."""
    from edgemm.runtime.llm import GenerationOptions, LanguageModel, ask

    start = time.perf_counter()
    lm = LanguageModel.load(job["model"], threads=job["threads"])
    load_s = time.perf_counter() - start
    options = GenerationOptions(max_new_tokens=job["max_tokens"])  # greedy (temperature 0)
    ask(lm, WARM_UP, GenerationOptions(max_new_tokens=4)).result()
    texts = [q for q in job["questions"] if q["category"] != "photos"]
    photos = [q for q in job["questions"] if q["category"] == "photos"]
    answers = [_answer(ask(lm, q["question"], options), q) for q in texts]
    rss_llm = peak_rss_mb()
    seen, ocr = {}, False
    if photos:
        photo_answers, seen, ocr = _photo_answers(lm, job, photos, options)
        answers += photo_answers
    grounded = {}
    if job.get("grounded"):
        from edgemm.bench import grounded as grounding

        grounded = grounding.evaluate(lm, job["grounded"])
    return {
        "grounded": grounded,
        "name": lm.name,
        "load_s": load_s,
        "answers": answers,
        "descriptions": seen,  # what the offline route told the LLM about each photo
        "ocr": ocr,
        "peak_rss_llm_mb": rss_llm,
        "peak_rss_mb": peak_rss_mb(),
        "versions": package_versions("edgemm", "onnxruntime", "numpy", "rapidocr-onnxruntime"),
    }


# ---- parent side: the bundles, the workers, the scores ---------------------------------------------------------


def resolve_model(spec: str) -> Path:
    """A preset name (models/presets.json, under $EDGEMM_MODELS) or a bundle folder, opened and hash-checked."""
    from edgemm.models import presets
    from edgemm.runtime.bundle import MANIFEST, models_dir, open_bundle

    names = presets()["llm"]["presets"]
    path = Path(spec).expanduser()
    if spec in names and not path.exists():
        path = models_dir() / spec
        if not (path / MANIFEST).exists():
            raise EdgemmError(f"preset {spec} is not built (no {path / MANIFEST}): edgemm export llm --preset {spec}")
    elif not path.exists() and "/" not in spec:
        raise EdgemmError(f"{spec!r} is neither an llm preset ({', '.join(names)}) nor a bundle folder")
    return open_bundle(path, "llm").path  # a missing, tampered or other kind of bundle: its one-line BundleError


def built_models() -> list[Path]:
    """Every llm bundle in $EDGEMM_MODELS, by name."""
    from edgemm.runtime.bundle import bundle_kind, models_dir

    folder = models_dir()
    found = sorted(p for p in folder.iterdir() if bundle_kind(p) == "llm") if folder.is_dir() else []
    if not found:
        raise EdgemmError(f"no llm bundle in {folder}: build one with edgemm export llm --preset NAME")
    return found


def _median_ms(values: list[float]) -> float | None:
    return 1000 * statistics.median(values) if values else None


def summarize(result: dict, questions: list[Question]) -> dict:
    """Scores and speed of one worker's answers."""
    by_id = {q.id: q for q in questions}
    scores = {c: [0, 0] for c in CATEGORIES if any(q.category == c for q in questions)}
    text_ttft, photo_ttft, tokens, decode_s = [], [], 0, 0.0
    for a in result["answers"]:
        q = by_id[a["id"]]
        verdict = q.score(a["answer"])
        a.update(passed=verdict.passed, why=verdict.why)
        scores[q.category][0] += verdict.passed
        scores[q.category][1] += 1
        (photo_ttft if q.category == "photos" else text_ttft).append(a["first_token_s"])
        if a["new_tokens"] > 1:
            tokens, decode_s = tokens + a["new_tokens"] - 1, decode_s + a["decode_s"]
    passed, total = sum(s[0] for s in scores.values()), sum(s[1] for s in scores.values())
    for category, answers in result.get("grounded", {}).items():  # beside the question file's, not in "overall"
        scores[category] = [sum(a["passed"] for a in answers), len(answers)]
        if category == "tools":
            called = [a for a in answers if a["valid"] is not None]  # an answer cut by max_tokens returns no call
            scores["tools valid"] = [sum(a["valid"] for a in called), len(called)]
    return {
        **result,
        "scores": scores,
        "overall": [passed, total],
        "ttft_ms": _median_ms(text_ttft),
        "photo_ttft_ms": _median_ms(photo_ttft),
        "decode_tok_s": tokens / decode_s if decode_s else None,
    }


def _evaluate(folders: list[Path], questions: list[Question], args, complete: bool) -> tuple[dict, dict]:
    """{bundle name: summary} and {bundle name: why it failed}, each bundle answered in its own worker. ``complete``:
    the whole question set was asked, so each result is kept for `edgemm models`."""
    from tqdm import tqdm

    jobs = [asdict(q) for q in questions]
    results, failed = {}, {}
    with tqdm(total=len(folders) * len(questions), desc="eval", unit="question") as bar:

        def on_line(line: str) -> None:
            if line.startswith(PROGRESS):
                bar.update(1)
            elif line.strip():
                bar.write(line, file=sys.stderr)

        for folder in folders:
            bar.set_description(folder.name)
            job = {"model": str(folder), "questions": jobs, "threads": args.threads, "max_tokens": args.max_tokens}
            job["grounded"] = [c for c in GROUNDED if not args.category or c in args.category]
            job["vision_model"] = str(args.vision_model) if args.vision_model else None
            result = run_worker([sys.executable, "-m", "edgemm.bench.eval"], job, on_line=on_line)
            if "error" in result:
                failed[folder.name] = result["error"]
                continue
            size = sum(f["bytes"] for f in json.loads((folder / "manifest.json").read_text())["files"].values())
            results[folder.name] = {"path": str(folder), "megabytes": size / 1e6, **summarize(result, questions)}
            if complete and folder.parent == models_dir():
                record_eval(models_dir(), folder, results[folder.name])  # `edgemm models` shows it
    return results, failed


def run_eval(args) -> int:
    import shlex

    from edgemm.bench import eval_report
    from edgemm.runtime.bundle import default_bundle, open_bundle

    try:
        import tqdm  # noqa: F401
    except ImportError:
        raise EdgemmError("edgemm eval needs the bench extra (tqdm is missing): pip install 'edgemm[bench]'") from None
    version, every = load_questions(args.questions)
    chosen = [c for c in args.category or () if c not in GROUNDED]
    questions = select(every, chosen, args.limit) if chosen or not args.category else []
    folders = [resolve_model(spec) for spec in args.model] if args.model else built_models()
    vision = None
    if any(q.category == "photos" for q in questions):  # its one-line BundleError before any answer
        vision = open_bundle(args.vision_model or default_bundle("vision"), "vision").path.name
    started = eval_report.machine()
    results, failed = _evaluate(folders, questions, args, complete=len(questions) == len(every))
    report = {
        "questions_file": str(args.questions or "bench/" + QUESTIONS.name),
        "questions_version": version,
        "questions": [asdict(q) for q in questions],
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "vision": vision,
        "command": "edgemm " + shlex.join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {**started, "load_1min_end": eval_report.machine()["load_1min"]},
        "ocr": any(r["ocr"] for r in results.values()),
        "bundles": results,
        "failed": failed,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(eval_report.summary(report))
    if args.write:
        eval_report.write(report, args.write)
        log.info("wrote %s", args.write)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(serve(measure))
