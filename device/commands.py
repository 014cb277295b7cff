"""``edgemm listen``: the voice (+ camera) assistant on this machine's microphone, speaker and camera (or files
standing in for them)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from edgemm.runtime.cli import (
    BUNDLES_HELP,
    CONTEXT_HELP,
    _context,
    _every,
    _positive_seconds,
    _threads,
    _typed_line,
)


def _open_devices(args):
    """Microphone, speaker, camera from the flags; a missing one is reported once and left out (text instead)."""
    from edgemm.device import DeviceError, open_camera, open_microphone, open_speaker

    def attempt(what, opener, *a, **kw):
        try:
            return opener(*a, **kw)
        except DeviceError as e:
            print(f"edgemm: {e}" if what in str(e) else f"edgemm: {what}: {e}", file=sys.stderr)
            return None

    mic = attempt("microphone", open_microphone, args.mic, realtime=args.realtime)
    speaker = None if args.no_tts else attempt("speaker", open_speaker, args.speaker)
    camera = attempt("camera", open_camera, args.camera) if args.camera is not None or args.camera_mode else None
    return mic, speaker, camera


def cmd_listen(args) -> int:
    from edgemm.runtime.assistant import FOLLOW_UP_S, Assistant
    from edgemm.runtime.speech.endpoint import EndpointOptions

    if args.list_devices:
        from edgemm.device import list_audio_devices

        print(list_audio_devices())
        return 0
    mic, speaker, camera = _open_devices(args)
    try:
        assistant = Assistant.load(
            args.model,
            args.speech_model,
            args.vision_model,
            threads=args.threads,
            context=args.context,
            vision=camera is not None,
            speak=speaker is not None,
            camera_mode=args.camera_mode,
            endpoint=EndpointOptions(max_utterance_s=args.max_utterance),
            wake_words=args.wake,
            wake_model=args.wake_model,
            follow_up_s=FOLLOW_UP_S if args.follow_up is None else args.follow_up,
        )
        if mic is None:
            print("no microphone: type questions instead (Ctrl-D quits)", file=sys.stderr)
            turn = threading.Lock()  # timers are announced between answers

            def announce():
                if turn.acquire(blocking=False):
                    try:
                        _show(assistant.timers_done(speaker), args.verbose)
                    finally:
                        turn.release()

            _every(0.1, announce)
            for line in _typed_lines():
                with turn:
                    _show(assistant.respond(line, speaker, camera), args.verbose)
        else:
            print("listening (Ctrl-C quits)", file=sys.stderr)
            _show(assistant.run(mic, speaker, camera), args.verbose)
    finally:
        for device in (mic, speaker, camera):
            if device is not None:
                device.close()
    return 0


def _typed_lines():
    while (line := _typed_line()) is not None:
        if line.strip():
            yield line.strip()


def _show(events, verbose: bool) -> None:
    """Print the assistant's events: what is being heard (on one updating line, on a terminal), what was heard, the
    answer as it streams, per-turn latency with -v."""
    from edgemm.runtime.assistant import AnswerText, Asleep, Hearing, TimerDone, Transcript, TurnEnd, Woke

    live = sys.stdout.isatty()
    for event in events:
        if isinstance(event, Hearing):
            if live:
                print(f"\r\033[Kyou: {event.text} ...", end="", flush=True)
        elif isinstance(event, Woke):
            print(f"({event.word}: listening)", file=sys.stderr, flush=True)
        elif isinstance(event, Asleep):
            print(f"(asleep: say {' or '.join(repr(p) for p in event.phrases)})", file=sys.stderr, flush=True)
        elif isinstance(event, TimerDone):
            print(f"assistant: {event.text}", flush=True)
        elif isinstance(event, Transcript):
            clear = "\r\033[K" if live else ""  # the line of partials, replaced by what was heard
            print(f"{clear}you: {event.text}\nassistant: ", end="", flush=True)
        elif isinstance(event, AnswerText):
            print(event.text, end="", flush=True)
        elif isinstance(event, TurnEnd):
            print()
            if verbose:
                latency = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in event.turn.latency.items())
                print(f"  [from end of speech: {latency}]", file=sys.stderr)


def register(sub, parents: list, fmt) -> None:
    """Add ``listen`` to the ``edgemm`` subcommands ``sub``."""
    p = sub.add_parser("listen", parents=parents, help="the voice (+ camera) assistant", epilog=BUNDLES_HELP)
    p.add_argument("--mic", default=None, help="input device (index or name) or an audio file (default: system mic)")
    p.add_argument("--speaker", default=None, help="output device or a WAV file to write (default: system speaker)")
    p.add_argument("--camera", default=None, help="camera index, /dev/videoN, an image, a folder of images or a video")
    p.add_argument("--camera-mode", action="store_true", help="look at every question (not only scene questions)")
    p.add_argument("--no-tts", action="store_true", help="answer in text only")
    p.add_argument("--list-devices", action="store_true", help="list the audio devices and exit")
    p.add_argument("--realtime", action="store_true", help="pace an audio-file microphone at real time")
    p.add_argument(
        "--max-utterance", type=_positive_seconds, default=15.0, help="seconds after which an utterance is cut"
    )
    p.add_argument(
        "--wake", action="append", metavar="WORD", help="answer only after this wake word, e.g. hey_jarvis (repeatable)"
    )
    p.add_argument("--wake-model", type=Path, default=None, help="wake bundle (default preset)")
    p.add_argument(
        "--follow-up",
        type=_positive_seconds,
        default=None,
        help="with --wake: seconds after an answer in which a follow-up needs no wake word (default: 5)",
    )
    p.add_argument("--model", type=Path, default=None, help="llm bundle (default preset)")
    p.add_argument("--speech-model", type=Path, default=None, help="speech bundle (default preset)")
    p.add_argument(
        "--vision-model",
        type=Path,
        default=None,
        help="vision bundle, or a vlm bundle that answers scene questions (default preset)",
    )
    p.add_argument("--context", type=_context, default=None, help=CONTEXT_HELP)
    p.add_argument("--threads", type=_threads, default=None, help="CPU threads, up to the cores (default: at most 8)")
    p.set_defaults(func=cmd_listen)
