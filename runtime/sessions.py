"""The one place that creates onnxruntime sessions, with explicit options."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from edgemm.runtime.errors import BundleError
from edgemm.runtime.limits import available_cores, check_memory_for, check_threads, map_large_allocations
from edgemm.runtime.profiles import active_profile


def default_threads() -> int:
    """Physical-ish core count, capped: small boards gain nothing from oversubscription."""
    return min(available_cores(), 8)


def create_session(
    path: Path, threads: int | None = None, spinning: bool = False, arena: bool = False
) -> ort.InferenceSession:
    """A CPU session. onnxruntime's memory arena is off by default: each session's arena keeps the largest
    activations it ever held (Whisper's 30 s window, OCR on a big photo), and the whole assistant peaked at 970
    instead of 750 MB with arenas on, for ~10% slower speech decoding and no measurable LLM difference. A graph that
    needs more memory than is available is refused first (MemoryLimitError, with both figures)."""
    check_memory_for(path)  # refused before onnxruntime starts reading it
    profile = active_profile()
    one_by_one = profile.map_large_allocations
    if one_by_one:
        map_large_allocations()  # freed activations go back to the system at once, not into the heap
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = arena
    # onnxruntime's memory pattern allocates one block for all of a run's activations, planned from the first run;
    # without it each activation is allocated and freed on its own, and with the mmap threshold above each freed
    # one leaves the process at once: the pi profile's assistant peaked at 446 instead of 452 MB.
    options.enable_mem_pattern = not one_by_one
    options.intra_op_num_threads = check_threads(threads) or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if profile.layout_optimizations
        else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    )
    options.log_severity_level = 3  # errors only
    # Spin-waiting off by default: encoder, decoder and VAD sessions share few cores and spinning pools steal
    # them from each other (5 s clip on 2 cores: 0.19 s instead of 0.24 s idle, 0.32 s instead of 0.52 s under
    # load). Token-by-token LLM decoding runs ~200 tiny kernels per token back to back; there the wake-up cost
    # dominates and spinning wins (SmolLM2-135M int4, 2 threads: 240 instead of 160 tokens/s).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for damaged graphs
        raise BundleError(f"cannot load {path.name}: {str(e).splitlines()[0]}") from None
