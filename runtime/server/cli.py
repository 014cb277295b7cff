"""``edgemm serve``: the OpenAI-compatible server and the web assistant page (serve extra)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from edgemm.runtime.cli import BUNDLES_HELP, CONTEXT_HELP, _context, _positive_int, _positive_seconds, _threads
from edgemm.runtime.errors import EdgemmError


def cmd_serve(args) -> int:
    try:
        from edgemm.runtime.server.app import ServerConfig, serve
        from edgemm.runtime.server.models import ServerModels
    except ImportError as e:
        raise EdgemmError(
            f"edgemm serve needs the serve extra ({e.name} is missing): pip install 'edgemm[serve]'"
        ) from None
    models = ServerModels.load(
        args.model,
        args.speech_model,
        args.vision_model,
        threads=args.threads,
        context=args.context,
        speech=not args.no_speech,
        vision=not args.no_vision,
        voice=not args.no_tts,
        max_queue=args.max_queue,
        wake=not args.no_wake,
        wake_model=args.wake_model,
    )
    config = ServerConfig(
        api_key=args.api_key or os.environ.get("EDGEMM_API_KEY") or None,
        timeout=args.timeout,
        idle_timeout=args.idle_timeout,
        allow_hosts=tuple(args.allow_host),
        allow_origins=tuple(args.allow_origin),
    )

    def ready(url: str) -> None:
        print(f"edgemm serve: {url} (models: {', '.join(models.names())})", file=sys.stderr, flush=True)

    serve(models, args.host, args.port, config, ready=ready)
    return 0


def register(sub, parents: list, fmt) -> None:
    """Add ``serve`` to the ``edgemm`` subcommands ``sub``."""
    p = sub.add_parser(
        "serve", parents=parents, help="OpenAI-compatible server + web assistant (serve extra)", epilog=BUNDLES_HELP
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (another than loopback: set --api-key)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free one, printed at start)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: $EDGEMM_API_KEY)")
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name clients may use besides IP addresses, localhost and --host (repeatable; '*': any)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="another site whose pages may use the server, e.g. https://app.example (repeatable; '*': any)",
    )
    p.add_argument("--model", type=Path, default=None, help="llm bundle (default preset)")
    p.add_argument("--speech-model", type=Path, default=None, help="speech bundle (default preset)")
    p.add_argument("--vision-model", type=Path, default=None, help="vision or vlm bundle (default preset)")
    p.add_argument("--no-speech", action="store_true", help="no speech model: no transcription, no web assistant")
    p.add_argument("--no-vision", action="store_true", help="no image questions")
    p.add_argument(
        "--wake-model", type=Path, default=None, help="wake bundle for the page (default: the built default)"
    )
    p.add_argument("--no-wake", action="store_true", help="no wake words on the page")
    p.add_argument("--no-tts", action="store_true", help="no spoken answers, no /v1/audio/speech")
    p.add_argument("--max-queue", type=_positive_int, default=8, help="requests that may wait per model (then 429)")
    p.add_argument("--timeout", type=_positive_seconds, default=300.0, help="seconds one request may take")
    p.add_argument(
        "--idle-timeout",
        type=_positive_seconds,
        default=60.0,
        help="seconds a live transcription (/v1/audio/live) may send nothing before it is closed",
    )
    p.add_argument("--context", type=_context, default=None, help=CONTEXT_HELP)
    p.add_argument("--threads", type=_threads, default=None, help="CPU threads, up to the cores (default: at most 8)")
    p.set_defaults(func=cmd_serve)
