"""``edgemm export ...`` (imports torch; loaded only when an export is asked for)."""

from __future__ import annotations

import json
import logging

from edgemm.export.quantize import QuantizationError
from edgemm.export.speech import ExportError, export_speech
from edgemm.export.whisper_source import SourceError
from edgemm.export.ct2 import CT2FormatError
from edgemm.runtime.errors import EdgemmError

log = logging.getLogger(__name__)


def run_export(args) -> int:
    try:
        manifest = export_speech(args.source, args.quant, args.out, measure=not args.no_fidelity)
    except (SourceError, CT2FormatError, ExportError, QuantizationError) as e:
        raise EdgemmError(str(e)) from None
    fidelity = manifest.get("fidelity", {})
    log.info("wrote %s (%s); fidelity: %s", args.out, args.quant, json.dumps({k: v for k, v in fidelity.items() if k != "clip_files"}))
    return 0
