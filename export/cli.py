"""``edgemm export ...`` (imports torch; loaded only when an export is asked for).

Errors are ExportError (export/errors.py), an EdgemmError: ``edgemm``'s main prints them as one line.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgemm.export.llm import QUANTS as LLM_QUANTS
from edgemm.export.llm import export_llm
from edgemm.export.mobilenet import QUANTS as VISION_QUANTS
from edgemm.export.mobilenet import export_vision
from edgemm.export.speech import QUANTS as SPEECH_QUANTS
from edgemm.export.speech import export_speech
from edgemm.export.vlm import QUANTS as VLM_QUANTS
from edgemm.export.vlm import export_vlm
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
        source, quant = source or preset["source"], quant or preset["quant"]
        out = out or models_dir() / args.preset
    if not source or not out:
        raise EdgemmError("give --preset NAME, or --source SRC and --out DIR")
    quant = quant or DEFAULT_QUANT[args.component]
    if quant not in QUANTS[args.component]:
        raise EdgemmError(f"{args.component} bundles are {' or '.join(QUANTS[args.component])}, not {quant}")
    return source, quant, out


DEFAULT_QUANT = {"speech": "int8", "llm": "int4", "vision": "int8", "vlm": "int4"}
QUANTS = {"speech": SPEECH_QUANTS, "llm": LLM_QUANTS, "vision": VISION_QUANTS, "vlm": VLM_QUANTS}
EXPORTERS = {"speech": export_speech, "llm": export_llm, "vision": export_vision, "vlm": export_vlm}


def run_export(args) -> int:
    source, quant, out = _resolve(args)
    manifest = EXPORTERS[args.component](source, quant, out, measure=not args.no_fidelity)
    megabytes = sum(entry["bytes"] for entry in manifest["files"].values()) / 1e6
    log.info("wrote %s (%s, %.0f MB)", out, quant, megabytes)
    return 0
