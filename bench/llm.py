"""``edgemm bench llm``: our LLM runtime against onnxruntime-genai and llama.cpp, same checkpoint, same threads.

The same token ids go to every engine, each in its own worker subprocess: ours here, the peers in ``.venv-peers``
(``make bench-peers``) through ``peers_worker.py``, whose ``measure`` times all three the same way. What is
measured and how: docs/BENCHMARKS.md, "LLM".
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edgemm.bench.peers_worker import LlamaCppEngine, OgenaiEngine, measure, onnx_weight_bytes
from edgemm.bench.worker import package_versions, run_worker, serve

if TYPE_CHECKING:
    from edgemm.bench.commands import LlmOptions

log = logging.getLogger("edgemm.bench.llm")

OURS, OGENAI, LLAMA_CPP = "ours", "ogenai", "llamacpp"  # a job's "engine"; the peers' are peers_worker.PEERS' keys
PROMPT_TOKENS = DECODE_TOKENS = 128
TEXT = Path("/usr/share/common-licenses/GPL-3")
TEXT_START = "Preamble"
PROBES = [
    "Hello world",
    "Héllo  wörld\n\tcafé 123 456789 naïve — “quotes” ünïcödé 🙂",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
]
OGENAI_FOLDER = "peers/smollm2-135m-ogenai-int4"  # under $EDGEMM_MODELS, as `make bench-peers` builds it
# Without --model: the bundle of the model the default peers run (OGENAI_FOLDER, the packaged GGUF), whatever the
# default LLM is; with --model, give the peers the same model (--ogenai-model, --gguf).
PEERS_PRESET = "smollm2-135m-instruct-int4"
PEER_VENV = ".venv-peers"
PEERS_WORKER = Path(__file__).resolve().with_name("peers_worker.py")  # run by the peers' python, by path
BANDWIDTH_BYTES = 512 * 2**20


# ---- worker side: our engine, in its own process; peers_worker.measure times it as it times the peers --------


class OursEngine:
    name = "edgemm int4"

    def __init__(self, model: str | None, threads: int, context: int):  # context: unused, our KV cache grows
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
        return package_versions("edgemm", "onnxruntime", "numpy")


NAMES = {OURS: OursEngine.name, OGENAI: OgenaiEngine.name, LLAMA_CPP: LlamaCppEngine.name}  # the report's


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


def _peer_jobs(args) -> tuple[dict, dict]:
    """{engine: (worker command, model)} of the peers that can run, and {engine: why not} of the others."""
    from edgemm.runtime.bundle import models_dir

    jobs, skipped = {}, {}
    peer_python, ogenai_model, gguf = (getattr(args, a, None) for a in ("peer_python", "ogenai_model", "gguf"))
    python = Path(peer_python) if peer_python else default_peer_python()
    if python is None or not python.exists():
        why = f"no peers' venv ({python or PEER_VENV + '/bin/python'}): run `make bench-peers`"
        return {}, {OGENAI: why, LLAMA_CPP: why}
    # -I (isolated): the script's folder stays off sys.path, so bench/'s modules cannot shadow installed packages
    command = [str(python), "-I", str(PEERS_WORKER)]
    ogenai = Path(ogenai_model) if ogenai_model else models_dir() / OGENAI_FOLDER
    if (ogenai / "genai_config.json").is_file():
        jobs[OGENAI] = (command, str(ogenai))
    else:
        skipped[OGENAI] = f"no onnxruntime-genai model at {ogenai}: run `make bench-peers`"
    if gguf and not Path(gguf).is_file():
        skipped[LLAMA_CPP] = f"--gguf {gguf}: no such file"
    else:  # without --gguf the worker finds the packaged one in its venv
        jobs[LLAMA_CPP] = (command, str(gguf) if gguf else None)
    return jobs, skipped


def gguf_label(path: Path) -> str:
    """The quantization a GGUF file's name gives (…-q4_k_m.gguf -> Q4_K_M), else "GGUF"."""
    found = re.findall(r"(?i)(?:^|[-_.])((?:i?q\d(?:_[a-z0-9]+)*)|bf16|f16|f32)(?=\.gguf$|[-.])", path.name)
    return found[-1].upper() if found else "GGUF"


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
    rows = [(*columns, "perplexity", "next-tok %", "= ours %")]
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
                f"{r['perplexity']:.3f}",
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


def run_bench_llm(args: LlmOptions) -> int:
    from tokenizers import Tokenizer

    from edgemm.runtime.bundle import models_dir, open_bundle
    from edgemm.runtime.errors import EdgemmError

    folder = Path(args.model) if args.model else models_dir() / PEERS_PRESET
    bundle = open_bundle(folder, "llm", verify=False)  # the worker checks every file when it loads
    tokenizer = Tokenizer.from_file(str(bundle.file(bundle.manifest["tokenizer"])))
    prompt, forced = bench_tokens(tokenizer)
    tokens = {"prompt": prompt, "forced": forced, "probes": [*PROBES, tokenizer.decode(prompt + forced)]}

    jobs = {OURS: ([sys.executable, "-m", "edgemm.bench.llm"], str(folder))}
    peer_jobs, skipped = _peer_jobs(args)
    jobs.update(peer_jobs)
    names = dict(NAMES)
    names[OURS] = f"edgemm {bundle.manifest.get('quantization', {}).get('scheme', 'int4')}"  # e.g. edgemm gguf
    if LLAMA_CPP in jobs and jobs[LLAMA_CPP][1]:
        names[LLAMA_CPP] = f"llama.cpp {gguf_label(Path(jobs[LLAMA_CPP][1]))}"  # e.g. llama.cpp Q4_K_M
    engines, notes = {}, []
    for engine, (command, model) in jobs.items():
        log.info("measuring %s (%d threads) in a subprocess ...", names[engine], args.threads)
        job = {"engine": engine, "model": model, "threads": args.threads, "runs": args.runs, **tokens}
        result = run_worker(command, job)
        if "error" in result:
            if engine == OURS:
                raise EdgemmError(result["error"])
            skipped[engine] = result["error"]
            continue
        engines[engine] = {"name": names[engine], **result}
    ours_ids = engines[OURS]["probes"]
    for r in engines.values():
        differ = sum(ids != mine for ids, mine in zip(r.pop("probes"), ours_ids, strict=True))
        if differ:
            notes.append(f"warning: {r['name']}'s tokenizer differs from ours on {differ} of {len(ours_ids)} strings")
    if not notes and len(engines) > 1:
        names = ", ".join(r["name"] for r in engines.values())
        notes.append(f"tokenizers: identical ids on {len(tokens['probes'])} strings ({names})")

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
    sys.exit(serve(lambda job: measure(job, OursEngine)))
