"""``edgemm wyoming``: the Wyoming service's command (registered by runtime/cli.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from edgemm.runtime.errors import EdgemmError


def cmd_wyoming(args) -> int:
    try:
        from edgemm.runtime.wyoming.service import MAX_CLIENTS, WyomingOptions, serve
    except ImportError as e:
        raise EdgemmError(
            f"edgemm wyoming needs the wyoming extra ({e.name} is missing): pip install 'edgemm[wyoming]'"
        ) from None
    from edgemm.runtime.server.models import ServerModels

    options = WyomingOptions(
        uri=args.uri,
        transcript_streaming=not args.no_streaming,
        timeout=args.timeout,
        max_clients=MAX_CLIENTS if args.max_clients is None else args.max_clients,
    )
    models = ServerModels.load(
        args.model,
        args.speech_model,
        threads=args.threads,
        context=args.context,
        vision=False,
        voice=not args.no_tts,
        max_queue=args.max_queue,
        voice_model=args.voice,
        wake=not args.no_wake,
        wake_model=args.wake_model,
    )
    names = [*models.names(), *([models.wake.path.name] if models.wake is not None else [])]

    def ready(uri: str) -> None:
        print(f"edgemm wyoming: {uri} (models: {', '.join(names)})", file=sys.stderr, flush=True)

    serve(models, options, ready=ready)
    return 0


def register(sub, parents: list, fmt) -> None:
    """Add ``wyoming`` to the ``edgemm`` subcommands ``sub``."""
    from edgemm.runtime.cli import BUNDLES_HELP, CONTEXT_HELP, _context, _positive_int, _positive_seconds, _threads

    p = sub.add_parser(
        "wyoming",
        parents=parents,
        help="speech to text, speech and the assistant for Home Assistant (Wyoming protocol; wyoming extra)",
        formatter_class=fmt,
        description="Serve Home Assistant's Wyoming protocol: add it in Home Assistant under Settings > Devices & "
        "services > Add integration > Wyoming Protocol, with this host and port (docs/HOME-ASSISTANT.md).",
        epilog=BUNDLES_HELP,
    )
    p.add_argument("--uri", default="tcp://127.0.0.1:10300", help="where to listen: tcp://HOST:PORT or unix://PATH")
    p.add_argument("--model", type=Path, default=None, help="llm bundle of the assistant (default preset)")
    p.add_argument("--speech-model", type=Path, default=None, help="speech bundle (default preset)")
    p.add_argument(
        "--voice", type=Path, default=None, help="voice bundle or Piper .onnx voice (default: the voice bundle)"
    )
    p.add_argument("--no-tts", action="store_true", help="no speech output")
    p.add_argument("--wake-model", type=Path, default=None, help="wake bundle for detect (default: the built default)")
    p.add_argument("--no-wake", action="store_true", help="no wake words")
    p.add_argument("--no-streaming", action="store_true", help="no transcript-start/-chunk/-stop events")
    p.add_argument("--max-queue", type=_positive_int, default=32, help="requests that may wait per model (then busy)")
    p.add_argument("--timeout", type=_positive_seconds, default=120.0, help="seconds one request may take")
    p.add_argument(
        "--max-clients", type=_positive_int, default=None, help="connections at once, then busy (default: 64)"
    )
    p.add_argument("--context", type=_context, default=None, help=CONTEXT_HELP)
    p.add_argument("--threads", type=_threads, default=None, help="CPU threads, up to the cores (default: at most 8)")
    p.set_defaults(func=cmd_wyoming)
