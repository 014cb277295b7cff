"""``edgemm export ...`` (imports torch; loaded only when an export is asked for).

Errors are ExportError (export/errors.py), an EdgemmError: ``edgemm``'s main prints them as one line.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgemm.export.driver import build
from edgemm.export.llm import LLM
from edgemm.export.mobilenet import VISION
from edgemm.export.speech import SPEECH
from edgemm.export.vlm import VLM
from edgemm.export.voice import VOICE
from edgemm.export.wake import WAKE
from edgemm.models import presets
from edgemm.runtime.bundle import models_dir
from edgemm.runtime.errors import EdgemmError

log = logging.getLogger(__name__)


def _resolve(args) -> tuple[str, str, Path]:
    """Source, quantization and output folder from --preset and/or the explicit flags."""
    source, quant, out = args.source, args.quant, args.out
    if args.preset:
        table = presets()[args.component]["presets"]
        if args.preset not in table:
            raise EdgemmError(f"unknown {args.component} preset {args.preset!r}; presets: {', '.join(table)}")
        preset = table[args.preset]
        if preset.get("build"):
            raise EdgemmError(
                f"{args.preset} is built by `{preset['build']}`, not by edgemm export; or get it: edgemm pull {args.preset}"
            )
        source, quant = source or preset["source"], quant or preset["quant"]
        out = out or models_dir() / args.preset
    if not source or not out:
        raise EdgemmError("give --preset NAME, or --source SRC and --out DIR")
    return source, quant or DEFAULT_QUANT[args.component], out


DEFAULT_QUANT = {"speech": "int8", "llm": "int4", "vision": "int8", "vlm": "int4", "voice": "int8", "wake": "fp32"}
COMPONENTS = {"speech": SPEECH, "llm": LLM, "vision": VISION, "vlm": VLM, "voice": VOICE, "wake": WAKE}


def run_export(args) -> int:
    source, quant, out = _resolve(args)
    # build() checks the quantization against the component's own list before it loads anything
    manifest = build(COMPONENTS[args.component], source, quant, out, measure=not args.no_fidelity)
    megabytes = sum(entry["bytes"] for entry in manifest["files"].values()) / 1e6
    log.info("wrote %s (%s, %.0f MB)", out, quant, megabytes)
    return 0
