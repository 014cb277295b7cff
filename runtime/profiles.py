"""Machine profiles: which default bundles and settings suit the machine the runtime runs on.

- ``desktop``: laptops and boards with 4 GB or more. The presets' defaults (models/presets.json): the LLM that
  answers best within 1.5 s to first audio on 2 cores (docs/EVAL.md).
- ``pi``: Raspberry Pi class boards (2-4 GB, slow memory). The smallest LLM, a shorter context window and a bounded
  conversation history (smaller KV caches), the photo models loaded for each scene question and dropped after it,
  freed buffers handed back to the system at once (``limits.map_large_allocations``), and no optimization that holds
  a second copy of weights, so that the whole assistant stays under 450 MB however long it runs.

The profile is ``$EDGEMM_PROFILE`` (``edgemm --profile`` sets it, so workers started by a command inherit it) or,
when that is unset or ``auto``, guessed: ``pi`` on a Raspberry Pi or with under 3 GiB of memory, else ``desktop``.
It only fills in what a caller leaves out: a bundle, context or thread count given explicitly always wins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgemm.runtime.errors import OptionsError
from edgemm.runtime.limits import total_memory

PROFILE_ENV = "EDGEMM_PROFILE"
SMALL_MEMORY = 3 << 30  # bytes of RAM under which the pi profile is chosen automatically
BOARD_MODEL = Path("/proc/device-tree/model")  # "Raspberry Pi 5 Model B Rev 1.0" on a Pi


@dataclass(frozen=True)
class Profile:
    name: str
    about: str
    presets: dict[str, str]  # kind -> preset used instead of the kind's default
    context: int | None = None  # the LLM's context window (None: the runtime's default)
    photo_models_on_demand: bool = False  # load the scene describer for each photo question, drop it after
    # Large buffers mapped and unmapped one by one (limits.map_large_allocations): freed activations leave the
    # process at once, for page faults on every new one (here: transcription 0.50 instead of 0.33 s).
    map_large_allocations: bool = False
    # onnxruntime's layout optimizations (blocked NCHWc convolutions): loading a graph then holds its weights in both
    # layouts at once (the object detector: 34 instead of 18 MB more while it loads); on 2 cores, no faster here.
    layout_optimizations: bool = True
    # llguidance's "slices" of the vocabulary, which speed up masks of large JSON schemas: 13 MB for a 49k-token
    # vocabulary; the assistant's tool grammar masks as fast without them (0.04 ms a token).
    grammar_slices: bool = True
    # Tokens the assistant's earlier turns may take in its prompts (None: what the context window leaves): every KV
    # cache then stays within the system prompt, these turns, one message and its answer (runtime/llm/chat.py).
    history: int | None = None


PROFILES = {
    "desktop": Profile("desktop", "laptops and boards with 4+ GB: the presets' defaults", presets={}),
    "pi": Profile(
        "pi",
        "Raspberry Pi class boards (2-4 GB): the smallest LLM, a 1024-token context, a 128-token history, photo models "
        "loaded per question, freed memory handed back at once",
        presets={"llm": "smollm2-135m-instruct-int4"},
        context=1024,
        photo_models_on_demand=True,
        map_large_allocations=True,
        layout_optimizations=False,
        grammar_slices=False,
        history=128,
    ),
}
CHOICES = ("auto", *PROFILES)


def guess() -> str:
    """``pi`` on a Raspberry Pi or a machine with under 3 GiB of memory, else ``desktop``."""
    try:
        board = BOARD_MODEL.read_bytes().decode(errors="replace")
    except OSError:
        board = ""
    memory = total_memory()
    small = "Raspberry Pi" in board or (memory is not None and memory < SMALL_MEMORY)
    return "pi" if small else "desktop"


def active_profile() -> Profile:
    """The profile ``$EDGEMM_PROFILE`` names, or the guessed one; an unknown name is an OptionsError."""
    name = os.environ.get(PROFILE_ENV, "").strip() or "auto"
    if name == "auto":
        name = guess()
    if name not in PROFILES:
        raise OptionsError(f"{PROFILE_ENV}={name!r} is not a profile; choose one of {', '.join(CHOICES)}")
    return PROFILES[name]


def use_profile(name: str) -> Profile:
    """Make ``name`` (or ``auto``) the profile of this process and of the processes it starts."""
    if name not in CHOICES:
        raise OptionsError(f"{name!r} is not a profile; choose one of {', '.join(CHOICES)}")
    os.environ[PROFILE_ENV] = name
    return active_profile()
