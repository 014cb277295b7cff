"""The ``edgemm`` command line: the runtime's commands (``transcribe``, ``ask``, ``chat``, ``say``, ``models``,
``doctor``; ``serve``, ``wyoming``, ``pull`` and ``bundle`` from their own modules), and those the other areas
register (``listen``: device/commands.py; ``export``, ``distill``: export/commands.py; ``bench``, ``eval``:
bench/commands.py).

Every user error prints one line (``edgemm: error: ...``) and exits with status 2; never a traceback.
"""

from __future__ import annotations

import argparse
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
COMMANDS_GROUP = "edgemm.commands"  # other areas' commands: pyproject.toml's entry points
AREAS = ("device", "export", "bench")  # their order in the help: the layers' order


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

    from edgemm.runtime import bundle_cli
    from edgemm.runtime.server import cli as server_cli
    from edgemm.runtime.wyoming import cli as wyoming_cli

    for area in (server_cli, bundle_cli, wyoming_cli):
        area.register(sub, [verbose], fmt)

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

    for area in _areas():  # listen, export, distill, bench, eval: the layers above the runtime register their own
        area(sub, [verbose], fmt)
    return parser


def _areas() -> list:
    """The ``register`` functions of the other areas' commands: the entry points of the ``edgemm.commands`` group,
    lower layers first (AREAS). One that cannot load is left out with a warning; the runtime's commands still
    work."""
    from importlib.metadata import entry_points

    points = sorted(
        entry_points(group=COMMANDS_GROUP),
        key=lambda p: (AREAS.index(p.name) if p.name in AREAS else len(AREAS), p.name),
    )
    found = []
    for point in points:
        try:
            found.append(point.load())
        except Exception as e:  # a broken install of one area
            log.warning("edgemm: the %s commands are unavailable (%s)", point.name, str(e).splitlines()[0])
    return found


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
