"""``edgemm bench vision``: from a photo in memory to the first answer token, for our two image-question paths.

The engines: the offline default (``vision`` bundle and OCR describe the photo, the ``llm`` bundle answers) and a
SmolVLM-256M-shaped ``vlm`` bundle built on first use by ``edgemm.bench.smolvlm_shape``, each in its own worker
subprocess. What is measured and how: docs/BENCHMARKS.md, "Vision".
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edgemm.bench.asr import aligned
from edgemm.bench.worker import package_versions, peak_rss_mb, run_worker, serve
from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.packages import installed

if TYPE_CHECKING:
    from edgemm.bench.commands import VisionOptions

log = logging.getLogger("edgemm.bench.vision")

OFFLINE, VLM = "offline", "vlm"
NAMES = {OFFLINE: "offline default", VLM: "SmolVLM-256M shape"}
QUESTION = "What animal is this?"
IMAGE_SIDE = 512
DECODE_TOKENS = 64
DECODE_TEXT = (
    "The animal in the photo is a cat, a tabby with a striped brown and grey coat, green eyes and long white "
    "whiskers. It sits still and looks to the side of the camera, calm and curious, in front of a plain background. "
)
IDLE_S = 0.1  # before each run: the LLM decoder's spinning threads go quiet
TARGET_FIRST_TOKEN_S, TARGET_THREADS = 0.42, 2
TARGET_SOURCE = "OpenVINO's published SmolVLM2-256M CPU figure"
SHAPE_FOLDER = "bench/smolvlm-256m-shape-int4"  # under $EDGEMM_MODELS
SHAPE_TOOL = "edgemm.bench.smolvlm_shape"  # run in its own process: it imports torch and transformers


# ---- worker side: one engine, one process ------------------------------------------------------------------


class Stages:
    """Seconds spent in chosen methods of live objects: each is wrapped, on the instance, by a timer."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, obj, method: str, stage: str) -> None:
        call = getattr(obj, method)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

        setattr(obj, method, timed)

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)


class OfflineEngine:
    """Classifier, detector (+ OCR) -> grounded question -> the default LLM."""

    def __init__(self, vision: str | None, llm: str | None, threads: int):
        from edgemm.runtime.llm.model import LanguageModel
        from edgemm.runtime.vision.describe import SceneDescriber

        for kind, path in (("vision", vision), ("llm", llm)):
            _require_bundle(kind, path)
        self.describer = SceneDescriber.load(vision, threads=threads)
        self.lm = LanguageModel.load(llm, threads=threads)
        self.stages = Stages()
        self.stages.wrap(self.describer.classifier, "classify", "classify")
        if self.describer.detector is not None:
            self.stages.wrap(self.describer.detector, "detect", "detect")
        if self.describer.reader is not None:
            self.stages.wrap(self.describer.reader, "read", "OCR")
        self.stages.wrap(self.lm, "forward", "prefill")
        self.facts = None

    def first_token(self, image, max_new_tokens: int = 1):
        from edgemm.runtime.llm.chat import ask
        from edgemm.runtime.llm.generate import GenerationOptions
        from edgemm.runtime.vision.describe import grounded_question

        self.facts = self.describer.facts(image)
        gen = ask(self.lm, grounded_question(QUESTION, [self.facts]), GenerationOptions(max_new_tokens=max_new_tokens))
        gen.result()
        return gen

    def preprocess_s(self, image) -> float | None:
        return None  # the classifier's preprocessing is inside "classify"

    def describe(self) -> dict:
        reader = self.describer.reader
        return {
            "vision": self.describer.classifier.bundle.path.name,
            "llm": self.lm.name,
            "ocr": "rapidocr-onnxruntime" if reader is not None else None,
            "facts": self.facts.describe() if self.facts else None,
        }


class VlmEngine:
    """A native vision-language model: image preprocessing, vision graph, spliced prefill."""

    def __init__(self, model: str | None, threads: int):
        from edgemm.runtime.vision.vlm import VisionLanguageModel

        _require_bundle("vlm", model)
        self.vlm = VisionLanguageModel.load(model, threads=threads)
        self.lm = self.vlm.lm
        self.stages = Stages()
        self.stages.wrap(self.vlm, "image_features", "vision")
        self.stages.wrap(self.lm, "forward", "prefill")

    def first_token(self, image, max_new_tokens: int = 1):
        from edgemm.runtime.llm.generate import GenerationOptions

        gen = self.vlm.ask(QUESTION, [image], GenerationOptions(max_new_tokens=max_new_tokens))
        gen.result()
        return gen

    def preprocess_s(self, image) -> float:
        from edgemm.runtime.vision.vlm import preprocess

        start = time.perf_counter()
        preprocess(image, self.vlm.image["processor"])
        return time.perf_counter() - start

    def describe(self) -> dict:
        m = self.vlm.lm.bundle.manifest
        return {
            "vlm": self.lm.name,
            "image_tokens": m["image"]["tokens_per_image"],
            "quantization": {k: m["quantization"].get(k) for k in ("scheme", "vision")},
        }


def _require_bundle(kind: str, path: str | None) -> None:
    from edgemm.runtime.bundle import MANIFEST, default_bundle

    folder = Path(path) if path else default_bundle(kind)
    if not (folder / MANIFEST).is_file():
        hint = " (run `make setup`)" if path is None and kind != "vlm" else ""
        raise EdgemmError(f"no {kind} bundle at {folder}{hint}")


def forced_tokens(tokenizer, n: int = DECODE_TOKENS) -> list[int]:
    """``n`` ids of DECODE_TEXT (repeated as needed) in the engine's own tokenizer."""
    ids = tokenizer.encode(DECODE_TEXT, add_special_tokens=False).ids
    return (ids * (n // len(ids) + 1))[:n]


def measure(job: dict) -> dict:
    """One engine's figures. The job: {"engine": OFFLINE or VLM, "model": the llm (offline) or vlm bundle or None,
    "vision_model": the offline vision bundle or None, "image": a .npy uint8 RGB array, "threads": n, "runs": n}."""
    import numpy as np

    engine, model, threads, runs = job["engine"], job["model"], job["threads"], job["runs"]
    image = np.load(job["image"])
    start = time.perf_counter()
    if engine == OFFLINE:
        eng = OfflineEngine(job["vision_model"], model, threads)
    else:
        eng = VlmEngine(model, threads)
    load_s = time.perf_counter() - start
    log.info("%s: loaded in %.2f s; 1 warm-up + %d runs", NAMES[engine], load_s, runs)
    forced = forced_tokens(eng.lm.tokenizer)
    first, decode, splits, prompt_tokens = [], [], [], 0
    for run in range(runs + 1):  # run 0 warms up
        eng.stages.reset()
        time.sleep(IDLE_S)
        t0 = time.perf_counter()
        gen = eng.first_token(image)
        t1 = time.perf_counter()
        split = dict(eng.stages.seconds)
        pre = eng.preprocess_s(image)
        if pre is not None:
            split = {"preprocess": pre, **split}
        split["other"] = (t1 - t0) - sum(split.values())
        t2 = time.perf_counter()
        for token in forced:
            int(eng.lm.prefill_tokens([token], gen.cache).argmax())
        t3 = time.perf_counter()
        if run:
            first.append(t1 - t0)
            decode.append(len(forced) / (t3 - t2))
            splits.append(split)
        prompt_tokens = gen.stats.prompt_tokens
    answer = None
    if engine == OFFLINE:  # one natural answer: the path works (the VLM's random weights answer noise)
        answer = eng.first_token(image, max_new_tokens=32).text.strip()
    return {
        "load_s": load_s,
        "first_token_s": statistics.median(first),
        "decode_tok_s": statistics.median(decode),
        "split_s": {stage: statistics.median(s[stage] for s in splits) for stage in splits[0]},
        "first_token_runs_s": first,
        "decode_runs_tok_s": decode,
        "prompt_tokens": prompt_tokens,
        "decode_tokens": len(forced),
        "answer": answer,
        "models": eng.describe(),
        "versions": package_versions("edgemm", "onnxruntime", "numpy", "pillow", "rapidocr-onnxruntime"),
        "peak_rss_mb": peak_rss_mb(),
    }


# ---- parent side: the photo, the SmolVLM-shaped bundle, the workers, the report ------------------------------


def bench_image(side: int = IMAGE_SIDE):
    """scikit-image's chelsea (451x300), centre square crop, resized (bicubic) to ``side`` x ``side`` uint8 RGB."""
    import numpy as np
    from PIL import Image

    try:
        import skimage.data
    except ImportError:
        raise EdgemmError("the benchmark photo is scikit-image's: pip install scikit-image") from None
    photo = skimage.data.chelsea()
    h, w = photo.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = Image.fromarray(photo[top : top + s, left : left + s])
    return np.asarray(square.resize((side, side), Image.Resampling.BICUBIC), np.uint8)


def shape_bundle() -> tuple[Path | None, str | None]:
    """The SmolVLM-256M-shaped bundle, built on first use; (None, why) when it cannot be built."""
    from edgemm.runtime.bundle import MANIFEST, models_dir

    bundle = models_dir() / SHAPE_FOLDER
    if (bundle / MANIFEST).is_file():
        return bundle, None
    missing = [m for m in ("torch", "transformers", "onnx") if not installed(m)]
    if missing:
        return None, f"building it needs the export extra ({', '.join(missing)} missing): pip install 'edgemm[export]'"
    log.info("building the SmolVLM-256M-shaped bundle (random weights, once) into %s ...", bundle)
    with tempfile.TemporaryDirectory(prefix="smolvlm-shape-") as tmp:
        cmd = [sys.executable, "-m", SHAPE_TOOL, str(Path(tmp) / "hf"), "--bundle", str(bundle)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode or not (bundle / MANIFEST).is_file():
        last = (proc.stdout.strip().splitlines() or ["no output"])[-1]
        return None, f"building it failed (exit status {proc.returncode}): {last}"
    return bundle, None


def _split_text(split: dict) -> str:
    return " + ".join(f"{stage} {1000 * s:.0f}" for stage, s in split.items())


def _table(report: dict) -> str:
    head = (
        f"edgemm bench vision: {report['threads']} threads, median of {report['runs']} runs; {report['image']}, "
        f"{report['question']!r}; decode: {report['decode_tokens']} teacher-forced tokens after the prompt"
    )
    columns = ("engine", "load s", "first token ms", "prompt tokens", "decode tok/s", "peak RSS MB")
    rows = [columns]
    for r in report["engines"].values():
        rows.append(
            (
                r["name"],
                f"{r['load_s']:.2f}",
                f"{1000 * r['first_token_s']:.0f}",
                str(r["prompt_tokens"]),
                f"{r['decode_tok_s']:.1f}",
                f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "-",
            )
        )
    lines = aligned(rows)
    for r in report["engines"].values():
        lines.append(f"{r['name']}: first token ms = {_split_text(r['split_s'])}")
        models = ", ".join(f"{k} {v}" for k, v in r["models"].items() if v is not None and k != "facts")
        lines.append(f"  models: {models}")
        if r.get("answer") is not None:
            lines.append(f"  facts: {r['models'].get('facts')}  answer: {r['answer']!r}")
    lines += [f"{name}: skipped: {why}" for name, why in report["skipped"].items()]
    target = report.get("target_check")
    if target:
        lines.append(
            f"target: SmolVLM-256M shape, {TARGET_THREADS} threads, first token <= {1000 * target['target_s']:.0f} ms "
            f"({TARGET_SOURCE}): {'met' if target['met'] else 'NOT met'} ({1000 * target['first_token_s']:.0f} ms"
            + ("" if target["threads"] == TARGET_THREADS else f" on {target['threads']} threads")
            + ")"
        )
    versions = {}
    for r in report["engines"].values():
        versions.update({k: v for k, v in r["versions"].items() if v})
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return "\n".join([head, *lines])


def run_bench_vision(args: VisionOptions) -> int:
    import numpy as np

    threads, runs = args.threads, args.runs
    vision = getattr(args, "vision_model", None)
    jobs, skipped = {OFFLINE: (None, str(vision) if vision else None)}, {}
    names = {**NAMES, VLM: f"vlm {Path(args.model).name}"} if args.model else NAMES
    if args.model:
        jobs[VLM] = (str(args.model), None)
    else:
        bundle, why = shape_bundle()
        if bundle is None:
            skipped[NAMES[VLM]] = why
        else:
            jobs[VLM] = (str(bundle), None)
    engines = {}
    with tempfile.TemporaryDirectory(prefix="edgemm-bench-vision-") as tmp:
        image = Path(tmp) / "chelsea.npy"
        np.save(image, bench_image())
        for engine, (model, vision_model) in jobs.items():
            log.info("measuring %s (%d threads) in a subprocess ...", NAMES[engine], threads)
            job = {
                "engine": engine,
                "model": model,
                "vision_model": vision_model,
                "image": str(image),
                "threads": threads,
                "runs": runs,
            }
            result = run_worker([sys.executable, "-m", "edgemm.bench.vision"], job)
            if "error" in result:
                skipped[names[engine]] = result["error"]
                continue
            engines[engine] = {"name": names[engine], **result}
    if not engines:
        raise EdgemmError("; ".join(f"{name}: {why}" for name, why in skipped.items()))
    report = {
        "target": "vision",
        "threads": threads,
        "runs": runs,
        "image": f"skimage chelsea, centre crop {IMAGE_SIDE}x{IMAGE_SIDE}",
        "question": QUESTION,
        "decode_tokens": DECODE_TOKENS,
        "engines": engines,
        "skipped": skipped,
    }
    if VLM in engines and not args.model:
        first = engines[VLM]["first_token_s"]
        report["target_check"] = {
            "target_s": TARGET_FIRST_TOKEN_S,
            "first_token_s": first,
            "threads": threads,
            "met": first <= TARGET_FIRST_TOKEN_S and threads <= TARGET_THREADS,
        }
    print(json.dumps(report) if args.json else _table(report))
    return 0


if __name__ == "__main__":
    sys.exit(serve(measure))
