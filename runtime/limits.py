"""The runtime's input limits, and the checks that enforce them at the library boundary.

The Python API, the CLI and the server pass what a user gives them through these functions, so a value of the wrong
type, out of range, not finite or too big is refused with one sentence naming the limit -- before any time or
memory is spent on it. README.md lists the same limits.
"""

from __future__ import annotations

import ctypes
import errno
import math
import numbers
import os
import stat
from pathlib import Path

from edgemm.runtime.errors import EdgemmError, MemoryLimitError, OptionsError

MAX_AUDIO_SECONDS = 2 * 3600  # one call: ~460 MB of float32 samples at 16 kHz; split longer recordings
MAX_AUDIO_BYTES = 512 << 20  # an encoded recording given as bytes or read from a pipe
SAMPLE_RATES = (1000, 768_000)  # Hz: the rates accepted for audio given as an array
MAX_TEXT_CHARS = 100_000  # one question or message: far past any context window (about 4 characters a token)
MAX_SPEECH_CHARS = 5_000  # one text to speak: about 5 minutes of speech
MAX_LINE_CHARS = 65_536  # one line typed (or piped) into `edgemm chat` / `edgemm listen`
MAX_IMAGE_PIXELS = 64_000_000  # one image: any camera photo; 8000x8000 RGB is 192 MB decoded
MAX_IMAGE_BYTES = 256 << 20  # an encoded image given as bytes or read from a pipe
MAX_IMAGES = 16  # images in one question
MAX_REQUEST_PIXELS = 192_000_000  # one question's images together: 3 at MAX_IMAGE_PIXELS, 16 phone photos of 12 Mpx


class InputError(EdgemmError, ValueError):
    """A text or a file given as input is unusable or over a limit."""


# A graph loaded by onnxruntime takes about its file size (weights, external data) plus what it prepacks and plans:
# SmolLM2-135M int4 maps 136 MB of weights and peaks near 160 MB. Refused when that much is not available.
LOAD_FACTOR, LOAD_OVERHEAD = 1.2, 32 << 20
SKIP_MEMORY_CHECK = "EDGEMM_SKIP_MEMORY_CHECK"  # set to 1 to load anyway (e.g. with swap the kernel cannot see)


def meminfo(field: str) -> int | None:
    """Bytes of one Linux /proc/meminfo field (``MemTotal``, ``MemAvailable``...), or None (not Linux, no field)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable: free plus reclaimable cache), or None."""
    return meminfo("MemAvailable")


def total_memory() -> int | None:
    """Bytes of RAM (Linux MemTotal), or None."""
    return meminfo("MemTotal")


def check_memory_for(*graphs: Path) -> None:
    """Refuse, before loading, graphs (with their external data files) that together need more memory than is
    available: one sentence with both figures. Unknown availability (not Linux) or $EDGEMM_SKIP_MEMORY_CHECK=1
    skips it. Models call it with all their graphs first; every session also checks its own graph."""
    if os.environ.get(SKIP_MEMORY_CHECK) == "1":
        return
    available = available_memory()
    if available is None:
        return
    size = 0
    for graph in map(Path, graphs):
        for f in (graph, graph.with_name(f"{graph.name}.data")):
            size += f.stat().st_size if f.is_file() else 0
    needed = int(size * LOAD_FACTOR) + LOAD_OVERHEAD
    if needed > available:
        first = Path(graphs[0])
        what = first.parent.name if len(graphs) > 1 else f"{first.parent.name}/{first.name}"
        raise MemoryLimitError(
            f"not enough memory for {what}: it needs about {needed >> 20} MB and {available >> 20} MB are "
            f"available (close other programs or pick a smaller preset: edgemm models; {SKIP_MEMORY_CHECK}=1 "
            f"loads it anyway)"
        )


def _glibc():
    """The C library's handle when it is glibc (it has ``malloc_trim``), else None (musl, macOS, Windows)."""
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(None)
            _libc = libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else False
        except OSError:
            _libc = False
    return _libc or None


def release_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing). Freed activations of
    a finished stage otherwise stay in the process's resident memory, where the next stage's peak adds to them."""
    if libc := _glibc():
        libc.malloc_trim(0)


def map_large_allocations() -> None:
    """Serve every C allocation of ``MMAP_THRESHOLD`` bytes or more with its own memory mapping, returned to the
    system as soon as it is freed (glibc; elsewhere nothing). Process-wide and idempotent; the ``pi`` machine profile
    turns it on (runtime/profiles.py).

    glibc starts at that threshold but raises it (up to 32 MB) each time a mapped block is freed, so after the first
    30 s speech window or photo the activations of every later one come from the heap, whose freed pages stay
    resident under the next stage's: the whole assistant peaked 41 MB higher (580 instead of 539 MB). Setting the
    threshold explicitly keeps it fixed. The cost is page faults on every fresh buffer, which a virtual machine makes
    dear: on this 2-core guest a transcription took 0.50 instead of 0.33 s, a photo's facts 0.55 instead of 0.40 s,
    a 128-token LLM prefill +9%; decoding did not change."""
    global _large_allocations_mapped
    libc = _glibc()
    if libc and not _large_allocations_mapped:
        _large_allocations_mapped = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD = 128 << 10  # glibc's own starting value
_libc = None
_large_allocations_mapped = False


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def check_int(value, name: str, low: int, high: int) -> int:
    """``value`` as an int within [low, high]; integral floats (2.0) pass, bools and strings do not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionsError(f"{name} must be a number, not {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value == int(value) and low <= value <= high):
        bounds = f">= {low}" if high >= 2**62 else f"between {low} and {high}"
        raise OptionsError(f"{name} must be an integer {bounds}, not {value!r}")
    return int(value)


def check_float(value, name: str, low: float, high: float = math.inf, low_open: bool = False) -> float:
    """``value`` as a finite float within [low, high] (or (low, high] with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionsError(f"{name} must be a number, not {type(value).__name__} {value!r}")
    value = float(value)
    above_low = value > low if low_open else value >= low
    if not (math.isfinite(value) and above_low and value <= high):
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise OptionsError(f"{name} must be a finite number in {bounds}, not {value!r}")
    return value


MAX_SEED = 2**63 - 1
MAX_NEW_TOKENS = 1 << 20


def check_seed(seed) -> int | None:
    return None if seed is None else check_int(seed, "seed", 0, MAX_SEED)


def check_threads(threads) -> int | None:
    """None (the default) or a thread count between 1 and the cores available: more threads than cores only make
    every step wait for the scheduler (1000 threads: 35 s instead of 0.5 s for one answer)."""
    if threads is None:
        return None
    cores = available_cores()
    try:
        return check_int(threads, "threads", 1, cores)
    except OptionsError:
        raise OptionsError(f"threads must be an integer from 1 to {cores} (the cores here), not {threads!r}") from None


def check_sample_rate(rate) -> int:
    return check_int(rate, "sample rate (Hz)", *SAMPLE_RATES)


def check_text(text, what: str = "the prompt", limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` must be a str of at most ``limit`` characters."""
    if not isinstance(text, str):
        raise InputError(f"{what} must be text, not {type(text).__name__}")
    if len(text) > limit:
        raise InputError(f"{what} has {len(text):,} characters; the limit is {limit:,}")
    return text


def check_input_file(path: Path, what: str = "file") -> os.stat_result:
    """Stat ``path`` and refuse, in words, what cannot be read as an input file: missing, a broken symbolic link,
    a symbolic link loop, a folder, no permission. Pipes and devices pass (the caller reads them as streams)."""
    try:
        info = path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError(f"{path}: a loop of symbolic links") from None
        if e.errno == errno.ENOENT and path.is_symlink():
            raise InputError(f"{path}: a broken symbolic link (to {os.readlink(path)})") from None
        if e.errno == errno.ENOENT:
            raise InputError(f"{what} not found: {path}") from None
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{path} is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {path}: permission denied")
    return info


def is_stream(info: os.stat_result) -> bool:
    """A pipe, FIFO, socket or character device: read it to its end, it has no size to check beforehand."""
    return not stat.S_ISREG(info.st_mode)


def read_stream(path: Path, what: str, limit: int) -> bytes:
    """The bytes of a pipe or device, at most ``limit`` of them."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{path}: the {what} from this pipe or device is over {limit >> 20} MB, the limit")
    if not data:
        raise InputError(f"{path}: the pipe or device gave no data")
    return data


def read_line(stream, limit: int = MAX_LINE_CHARS) -> str | None:
    """One line from a text stream without its newline, or None at its end; a line over ``limit`` characters is
    refused (``edgemm chat < /dev/zero`` would otherwise read forever)."""
    line = stream.readline(limit + 1)
    if not line:
        return None
    if len(line) > limit and not line.endswith("\n"):
        raise InputError(f"an input line is over {limit:,} characters, the limit")
    return line.rstrip("\n")
