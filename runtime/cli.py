"""The ``edgemm`` command line: ``transcribe``, ``export``, ``bench``.

Every user error prints one line (``edgemm: error: ...``) and exits with status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from edgemm.runtime.errors import EdgemmError

log = logging.getLogger("edgemm")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def cmd_transcribe(args) -> int:
    from edgemm.runtime.decoding import DecodingOptions
    from edgemm.runtime.transcribe import TranscribeOptions, Transcriber

    transcriber = Transcriber.load(args.model, threads=args.threads)
    decoding = DecodingOptions(
        task=args.task, language=args.language, beam_size=args.beam, timestamps=not args.no_timestamps
    )
    result = transcriber.transcribe(args.audio, options=TranscribeOptions(decoding=decoding, vad=not args.no_vad))
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    elif args.timestamps:
        for s in result.segments:
            print(f"[{s.start:7.2f} -> {s.end:7.2f}] {s.text.strip()}")
    else:
        print(result.text)
    return 0


def cmd_export(args) -> int:
    try:
        from edgemm.export.cli import run_export
    except ImportError as e:
        raise EdgemmError(
            f"exporting needs the export extra ({e.name} is missing): pip install 'edgemm[export]'"
        ) from None
    return run_export(args)


def cmd_bench(args) -> int:
    from edgemm.runtime.bench import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="edgemm", description="On-device speech, text and image assistant.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and timings")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("transcribe", help="speech to text", formatter_class=fmt)
    p.add_argument("audio", type=Path, help="WAV, FLAC, OGG or MP3 file")
    p.add_argument("--model", type=Path, default=None, help="speech bundle folder (default: the built default preset)")
    p.add_argument("--beam", type=_positive_int, default=1, help="beam size (1 = greedy)")
    p.add_argument("--language", default=None, help="language code, e.g. en (default: detect)")
    p.add_argument("--task", choices=["transcribe", "translate"], default="transcribe")
    p.add_argument("--json", action="store_true", help="print one JSON object with text and segments")
    p.add_argument("--timestamps", action="store_true", help="print one line per segment with times")
    p.add_argument("--no-timestamps", action="store_true", help="decode without timestamp tokens")
    p.add_argument("--no-vad", action="store_true", help="do not skip non-speech with the VAD")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: cores, at most 8)")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("export", help="build a model bundle (needs the export extra)", formatter_class=fmt)
    p.add_argument("component", choices=["speech"], help="which model to export")
    p.add_argument(
        "--preset", help="a preset from models/presets.json (gives source and quant; out: $EDGEMM_MODELS/NAME)"
    )
    p.add_argument("--source", help="packaged:NAME, a CTranslate2 or transformers folder, or a hub id")
    p.add_argument("--quant", choices=["fp32", "int8"], default=None, help="default: int8, or the preset's")
    p.add_argument("--out", type=Path, help="bundle folder to write (replaced only on success)")
    p.add_argument("--no-fidelity", action="store_true", help="skip the WER measurement on the development clips")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="speed and memory against peers", formatter_class=fmt)
    p.add_argument("target", choices=["asr"])
    p.add_argument("--model", type=Path, default=None, help="speech bundle (default preset)")
    p.add_argument("--ct2-model", default="packaged:whisper-tiny.en", help="CTranslate2 model for the peer")
    p.add_argument("--runs", type=_positive_int, default=5, help="timed runs per clip (median reported)")
    p.add_argument("--threads", type=_positive_int, default=2)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        logging.getLogger("edgemm").setLevel(logging.INFO)
        logging.getLogger().handlers[0].setFormatter(logging.Formatter("%(message)s"))
    try:
        return args.func(args)
    except EdgemmError as e:
        print(f"edgemm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgemm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
