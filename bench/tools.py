"""``edgemm bench tools``: the tool-calling set (bench/toolcalls.py) sent through the real `openai` client to
`edgemm serve` and to llama.cpp's `llama-server --jinja` on the same GGUF, in one run.

For each server and each ``tool_choice`` ("required", then "auto"): how many answers named the right function with
the right arguments, how many returned calls validate against their schema, and the median seconds per request.
Both are greedy (temperature 0), at most 120 new tokens, with edgemm's default system prompt sent as the system
message: the same prompt on both (without one, edgemm would add it and llama-server keep the template's own).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edgemm.bench.serve import ServerProcess
from edgemm.bench.toolcalls import CASES, TOOLS, right, valid
from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.llm.chat import DEFAULT_SYSTEM

if TYPE_CHECKING:
    from edgemm.bench.commands import ToolsOptions

CHOICES = ("required", "auto")


def run_set(client, choice: str) -> dict:
    """The set against one server: right answers, valid and returned calls, median seconds."""
    rights, valids, returned, seconds = 0, 0, 0, []
    for question, name, arguments in CASES:
        start = time.perf_counter()
        reply = client.chat.completions.create(
            model="any",
            messages=[{"role": "system", "content": DEFAULT_SYSTEM}, {"role": "user", "content": question}],
            tools=TOOLS,
            tool_choice=choice,
            max_tokens=120,
            temperature=0,
        )
        seconds.append(time.perf_counter() - start)
        calls = reply.choices[0].message.tool_calls or []
        returned += len(calls)
        valids += sum(valid(c.function.name, c.function.arguments) for c in calls)
        rights += bool(calls) and right(calls[0].function.name, calls[0].function.arguments, name, arguments)
    return {
        "right": rights,
        "cases": len(CASES),
        "calls": returned,
        "valid": valids,
        "median_s": statistics.median(seconds),
    }


class LlamaServer:
    """``llama-server --jinja`` on ``gguf`` (the checkpoint's own chat template, its tool-call parser and grammar)."""

    def __init__(self, binary: Path, gguf: Path, threads: int, port: int = 8089):
        self.url = f"http://127.0.0.1:{port}"
        command = [str(binary), "-m", str(gguf), "--jinja", "--port", str(port), "-t", str(threads), "-c", "4096"]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        import urllib.request

        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise EdgemmError("llama-server did not start in 120 s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def run_bench_tools(args: ToolsOptions) -> int:
    try:
        import openai
    except ImportError:
        raise EdgemmError("edgemm bench tools needs the openai client: pip install 'edgemm[test]'") from None
    from edgemm.runtime.bundle import default_bundle

    bundle = Path(args.model) if args.model else default_bundle("llm")
    results = {}

    def client(url):
        return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300)

    with ServerProcess(
        "--model", str(bundle), "--no-speech", "--no-vision", "--no-tts", "--threads", str(args.threads)
    ) as s:
        results[f"edgemm {bundle.name}"] = {c: run_set(client(s.url), c) for c in CHOICES}
    if args.llama_server:
        if not args.gguf:
            raise EdgemmError("give --gguf: the GGUF file the edgemm bundle was made from")
        with LlamaServer(args.llama_server, args.gguf, args.threads) as peer:
            results[f"llama-server {Path(args.gguf).name}"] = {c: run_set(client(peer.url), c) for c in CHOICES}
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print("| server | tool_choice | right | calls valid / returned | median s |\n|---|---|---|---|---|")
    for name, by_choice in results.items():
        for choice, r in by_choice.items():
            print(
                f"| {name} | {choice} | {r['right']}/{r['cases']} | {r['valid']}/{r['calls']} | {r['median_s']:.2f} |"
            )
    return 0
