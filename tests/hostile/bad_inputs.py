"""The bad-input corpus: hostile and careless inputs for the CLI and the Python API, each with its exact outcome.

Nothing here is a committed binary: ``build(folder, ...)`` writes every file the cases need (damaged, empty, huge
and oddly encoded audio and images, links, a FIFO, a camera folder with a broken frame, tampered copies of a bundle)
from the real clips, a real photo and the project's voice. ``tests/hostile/test_bad_input_corpus.py`` runs every case; to
look at the files by hand:

    python -m tests.hostile.bad_inputs /tmp/corpus      # writes the files, prints the cases

A CLI case is ``edgemm ARGS`` with ``{d}`` standing for the corpus folder and ``{llm}`` for a tampered llm bundle's
parent folder; it expects either one error line (exact, after the ``edgemm...: error:`` prefix) and exit status 2,
or exit status 0 and every phrase of ``says`` in its output. An API case calls the library and expects an exception
type with an exact message, or a result containing ``says`` (or, with ``transcript``, the clip's words).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from edgemm.runtime.bundle import default_bundle
from edgemm.runtime.limits import MAX_IMAGE_PIXELS, MAX_LINE_CHARS, MAX_SPEECH_CHARS, MAX_TEXT_CHARS, available_cores

MANIFEST = "manifest.json"
QUESTION = "What animal is in this picture?"
MAX_WER = 0.2


@dataclass(frozen=True)
class Case:
    """``argv`` for a CLI case, or ``call`` (name of a function in API_CALLS) for an API case."""

    name: str
    argv: tuple[str, ...] = ()
    call: str | None = None
    stdin: str | None = None  # a corpus file fed through a pipe, or a device path (/dev/zero) given as stdin
    error: str | None = None  # the exact error (CLI: the line after "error: "; API: the exception's message)
    raises: str = "EdgemmError"  # API: the exception class name (or a base class's)
    says: tuple[str, ...] = ()  # words the output must contain (lowercase), when the case must succeed
    transcript: bool = False  # the output must be the clip's transcript (WER <= MAX_WER against its reference)
    timeout: float = 120.0
    needs: tuple[str, ...] = field(default=())  # "tts", "fifo": skipped without them


def cli(name, *argv, **kw) -> Case:
    return Case(name, argv=argv, **kw)


def api(name, call, **kw) -> Case:
    return Case(name, call=call, **kw)


CORES = available_cores()


def _default_llm_positions() -> int | str:
    """The default llm bundle's longest context (``model.max_positions``), which the context errors name."""
    try:
        return json.loads((default_bundle("llm") / MANIFEST).read_text())["model"]["max_positions"]
    except (OSError, ValueError, KeyError):
        return "?"  # no default bundle: the cases that need it are skipped


LLM_POSITIONS = _default_llm_positions()

CASES = [
    # --- audio files --------------------------------------------------------------------------------------------
    cli("audio-missing", "transcribe", "{d}/nope.wav", error="audio file not found: {d}/nope.wav"),
    cli("audio-empty", "transcribe", "{d}/empty.wav", error="{d}/empty.wav is empty (0 bytes)"),
    cli(
        "audio-not-audio",
        "transcribe",
        "{d}/text.wav",
        error="cannot decode {d}/text.wav as audio (Format not recognised.); supported: WAV, FLAC, OGG, MP3",
    ),
    cli("audio-folder", "transcribe", "{d}", error="{d} is a folder, not a file"),
    cli("audio-symlink-loop", "transcribe", "{d}/loop.wav", error="{d}/loop.wav: a loop of symbolic links"),
    cli(
        "audio-broken-link",
        "transcribe",
        "{d}/broken.wav",
        error="{d}/broken.wav: a broken symbolic link (to {d}/gone.wav)",
    ),
    cli(
        "audio-too-long",
        "transcribe",
        "{d}/three-hours.flac",
        error="{d}/three-hours.flac lasts 180 min; the limit is 120 min per call (split the file)",
    ),
    cli(
        "audio-nan",
        "transcribe",
        "{d}/nan.wav",
        error="the audio contains NaN or infinite samples",
    ),
    cli("audio-through-a-pipe", "transcribe", "/dev/stdin", stdin="clip.wav", transcript=True),
    cli(
        "audio-empty-pipe",
        "transcribe",
        "/dev/stdin",
        stdin="empty.wav",
        error="/dev/stdin: the pipe or device gave no data",
    ),
    cli("audio-fifo", "transcribe", "{d}/fifo.wav", transcript=True, needs=("fifo",)),
    cli(
        "audio-device",
        "transcribe",
        "/dev/null",
        error="/dev/null: the pipe or device gave no data",
    ),
    # A float WAV at 1000x gain (peak ~400): scaled back, transcribed as at the normal level (it used to be "And I'm
    # just going to do this for you." three times).
    cli("audio-float-x1000", "transcribe", "{d}/loud.wav", transcript=True),
    cli("audio-8khz-stereo", "transcribe", "{d}/stereo-8k.wav", transcript=True),
    # --- transcription options ------------------------------------------------------------------------------------
    cli("beam-0", "transcribe", "{d}/clip.wav", "--beam", "0", error="argument --beam: must be >= 1, got 0"),
    cli(
        "beam-17",
        "transcribe",
        "{d}/clip.wav",
        "--beam",
        "17",
        error="beam size must be an integer between 1 and 16, not 17",
    ),
    cli(
        "translate-english-only",
        "transcribe",
        "{d}/clip.wav",
        "--task",
        "translate",
        error="this model is English-only: it cannot translate or transcribe other languages",
    ),
    api(
        "sample-rate-1",
        "transcribe_rate_1",
        error="sample rate (Hz) must be an integer between 1000 and 768000, not 1",
        raises="OptionsError",
    ),
    api(
        "sample-rate-0",
        "transcribe_rate_0",
        error="sample rate (Hz) must be an integer between 1000 and 768000, not 0",
        raises="OptionsError",
    ),
    api(
        "sample-rate-nan",
        "transcribe_rate_nan",
        error="sample rate (Hz) must be an integer between 1000 and 768000, not nan",
        raises="OptionsError",
    ),
    api(
        "sample-rate-inf",
        "transcribe_rate_inf",
        error="sample rate (Hz) must be an integer between 1000 and 768000, not inf",
        raises="OptionsError",
    ),
    api(
        "sample-rate-text",
        "transcribe_rate_text",
        error="sample rate (Hz) must be a number, not str '16000'",
        raises="OptionsError",
    ),
    api(
        "sample-rate-with-a-file",
        "transcribe_file_with_rate",
        error="sample_rate is only for an array of samples: a file or bytes carry their own rate",
        raises="AudioError",
    ),
    api(
        "audio-list",
        "transcribe_list",
        error="audio must be a file path, the bytes of an audio file or a numpy array of samples, not list",
        raises="AudioError",
    ),
    api(
        "audio-none",
        "transcribe_none",
        error="audio must be a file path, the bytes of an audio file or a numpy array of samples, not NoneType",
        raises="AudioError",
    ),
    api(
        "audio-garbage-bytes",
        "transcribe_garbage_bytes",
        error="cannot decode the audio bytes as audio (Format not recognised.); supported: WAV, FLAC, OGG, MP3",
        raises="AudioError",
    ),
    api("audio-wav-bytes", "transcribe_wav_bytes", transcript=True),
    api(
        "audio-too-long-array",
        "transcribe_long_array",
        error="the audio lasts 121 min; the limit is 120 min per call (split it)",
        raises="AudioError",
    ),
    api(
        "audio-strings-array",
        "transcribe_string_array",
        error="audio array has dtype <U1; expected float or integer PCM samples",
        raises="AudioError",
    ),
    api("transcribe-deterministic", "transcribe_twice_with_fallback", says=("same",)),
    api(
        "transcribe-bad-options",
        "transcribe_bad_options",
        error="options must be TranscribeOptions, not dict",
        raises="OptionsError",
    ),
    # --- text in ----------------------------------------------------------------------------------------------------
    cli("ask-empty", "ask", "", error="the prompt is empty"),
    cli("ask-control-characters", "ask", "\x01\x02\x1b", error="the prompt is empty"),
    cli(
        "chat-dev-zero",
        "chat",
        stdin="/dev/zero",
        error=f"an input line is over {MAX_LINE_CHARS:,} characters, the limit",
    ),
    cli(
        "chat-long-line",
        "chat",
        stdin="long-line.txt",
        error=f"an input line is over {MAX_LINE_CHARS:,} characters, the limit",
    ),
    cli("chat-invalid-utf8", "chat", "--max-tokens", "16", stdin="latin1.txt", says=("paris",)),
    api(
        "ask-too-long",
        "ask_too_long",
        error=f"the prompt has {MAX_TEXT_CHARS + 1:,} characters; the limit is {MAX_TEXT_CHARS:,}",
        raises="InputError",
    ),
    api("ask-none", "ask_none", error="the prompt must be text, not NoneType", raises="InputError"),
    api(
        "ask-options-dict",
        "ask_options_dict",
        error="options must be GenerationOptions, not dict",
        raises="OptionsError",
    ),
    api(
        "context-5",
        "llm_context_5",
        error=f"context must be an integer between 16 and {LLM_POSITIONS}, not 5",
        raises="OptionsError",
    ),
    api(
        "threads-1000-api",
        "llm_threads_1000",
        error=f"threads must be an integer from 1 to {CORES} (the cores here), not 1000",
        raises="OptionsError",
    ),
    # --- generation options ---------------------------------------------------------------------------------------
    cli("seed-negative", "ask", "hi", "--seed", "-1", error="seed must be an integer >= 0, not -1"),
    cli(
        "temperature-nan",
        "ask",
        "hi",
        "--temperature",
        "nan",
        error="temperature must be a finite number in [0, 100], not nan",
    ),
    cli("top-p-0", "ask", "hi", "--top-p", "0", error="top_p must be a finite number in (0, 1], not 0.0"),
    cli("top-k-negative", "ask", "hi", "--top-k", "-3", error="top_k must be an integer between 0 and 4194304, not -3"),
    cli(
        "repetition-penalty-0",
        "ask",
        "hi",
        "--repetition-penalty",
        "0",
        error="repetition_penalty must be a finite number in (0, 100], not 0.0",
    ),
    cli("max-tokens-0", "ask", "hi", "--max-tokens", "0", error="argument --max-tokens: must be >= 1, got 0"),
    cli(
        "context-huge",
        "ask",
        "hi",
        "--context",
        "10000000",
        error=f"context must be an integer between 16 and {LLM_POSITIONS}, not 10000000",
    ),
    cli(
        "threads-1000",
        "ask",
        "hi",
        "--threads",
        "1000",
        error=f"argument --threads: threads must be an integer from 1 to {CORES} (the cores here), not 1000",
    ),
    cli(
        "threads-0",
        "ask",
        "hi",
        "--threads",
        "0",
        error=f"argument --threads: threads must be an integer from 1 to {CORES} (the cores here), not 0",
    ),
    # --- speech out -----------------------------------------------------------------------------------------------
    cli(
        "say-too-long",
        "say",
        "{long_speech}",
        "--out",
        "{d}/out.wav",
        error=f"the text to speak has {MAX_SPEECH_CHARS * 9:,} characters; the limit is {MAX_SPEECH_CHARS:,}",
        needs=("tts",),
    ),
    cli(
        "say-to-a-folder",
        "say",
        "Hello.",
        "--out",
        "{d}",
        error="{d} is a folder: give the WAV file to write",
        needs=("tts",),
    ),
    # --- images -----------------------------------------------------------------------------------------------------
    cli("image-missing", "ask", "--image", "{d}/nope.png", "What is this?", error="image file not found: {d}/nope.png"),
    cli("image-empty", "ask", "--image", "{d}/empty.png", "What is this?", error="{d}/empty.png: the file is empty"),
    cli(
        "image-not-an-image",
        "ask",
        "--image",
        "{d}/text.jpg",
        "What is this?",
        error="{d}/text.jpg: not an image (or a format Pillow cannot read)",
    ),
    cli("image-folder", "ask", "--image", "{d}", "What is this?", error="{d} is a folder, not a file"),
    cli(
        "image-symlink-loop",
        "ask",
        "--image",
        "{d}/loop.png",
        "What is this?",
        error="{d}/loop.png: a loop of symbolic links",
    ),
    cli(
        "image-bomb",
        "ask",
        "--image",
        "{d}/bomb.png",
        "What is this?",
        error=f"{{d}}/bomb.png: far over {MAX_IMAGE_PIXELS // 10**6} megapixels, the limit",
    ),
    cli("image-through-a-pipe", "ask", "--image", "/dev/stdin", QUESTION, stdin="cat.png", says=("cat",)),
    api(
        "images-not-a-list",
        "images_not_a_list",
        error="images must be a list (of paths, bytes, PIL images or arrays), not str",
        raises="ImageError",
    ),
    api("images-too-many", "images_too_many", error="a question takes 1 to 16 images, not 17", raises="ImageError"),
    api(
        "image-wrong-array",
        "image_float_array",
        error="an image array must be uint8 [H, W], [H, W, 3] or [H, W, 4], not float64 (4, 4, 3)",
        raises="ImageError",
    ),
    # --- the assistant --------------------------------------------------------------------------------------------
    cli(
        "listen-max-utterance-0",
        "listen",
        "--max-utterance",
        "0",
        error="argument --max-utterance: must be a number of seconds > 0, got 0",
    ),
    cli(
        "listen-max-utterance-nan",
        "listen",
        "--max-utterance",
        "nan",
        error="argument --max-utterance: must be a number of seconds > 0, got nan",
    ),
    cli(
        "listen-camera-missing",
        "listen",
        "--mic",
        "{d}/two-questions.wav",
        "--camera",
        "{d}/nope",
        "--no-tts",
        says=("cannot see",),
        needs=("tts",),
    ),
    # A broken frame in the camera folder: that turn apologises, the next question is answered from the next frame.
    cli(
        "listen-broken-frame",
        "listen",
        "--mic",
        "{d}/two-questions.wav",
        "--camera",
        "{d}/camera",
        "--no-tts",
        says=("sorry, i could not look", "cat"),
        needs=("tts",),
        timeout=300,
    ),
    cli("listen-mic-folder", "listen", "--mic", "{d}", "--no-tts", stdin="empty.wav", says=("type questions",)),
    # --- tampered bundles (a copy of a small llm bundle each) ---------------------------------------------------------
    cli(
        "bundle-no-files-section",
        "ask",
        "--model",
        "{llm}/no-files",
        "hi",
        error="bundle {llm}/no-files: the manifest has no 'files' mapping (every file needs a hash)",
    ),
    cli(
        "bundle-unlisted-file",
        "ask",
        "--model",
        "{llm}/unlisted",
        "hi",
        error="bundle {llm}/unlisted: decoder.onnx is not listed in the manifest (refusing unhashed files)",
    ),
    cli(
        "bundle-tokenizer-outside",
        "ask",
        "--model",
        "{llm}/outside",
        "hi",
        error="bundle {llm}/outside: manifest tokenizer is '../../../../etc/passwd'; expected the name of a listed file",
    ),
    cli(
        "bundle-invalid-tokenizer",
        "ask",
        "--model",
        "{llm}/bad-tokenizer",
        "hi",
        error="{llm}/bad-tokenizer/tokenizer.json is not a readable tokenizer (key must be a string at line 1 column 3)",
    ),
    cli(
        "bundle-negative-dimension",
        "ask",
        "--model",
        "{llm}/negative",
        "hi",
        error="bundle {llm}/negative: manifest model.hidden_size is -1; expected an integer from 1 to 65536",
    ),
    cli(
        "bundle-text-dimension",
        "ask",
        "--model",
        "{llm}/text-dim",
        "hi",
        error="bundle {llm}/text-dim: manifest model.head_dim is 'abc'; expected an integer from 1 to 4096",
    ),
    cli(
        "template-huge-range",
        "ask",
        "--model",
        "{llm}/range",
        "hi",
        error="the chat template asks for a range of more than 10000 items",
    ),
    cli(
        "template-nested-loops",
        "ask",
        "--model",
        "{llm}/loops",
        "hi",
        error="the chat template took longer than 2 s to render",
    ),
]


# --- API calls: each takes (models, folder) and returns a value or raises -------------------------------------------


def transcribe_rate(rate):
    return lambda m, d: m.transcriber.transcribe(np.zeros(16000, np.float32), sample_rate=rate)


def transcribe_twice_with_fallback(m, d):
    """A clip decoded with a forced temperature fallback (every window retried hot): the same text twice."""
    from edgemm.runtime.speech.transcribe import TranscribeOptions

    options = TranscribeOptions(temperatures=(0.8,))
    first = m.transcriber.transcribe(d / "clip.wav", options=options).text
    second = m.transcriber.transcribe(d / "clip.wav", options=options).text
    return "same" if first == second else f"different: {first!r} / {second!r}"


def _ask(question, **kw):
    def call(m, d):
        from edgemm.runtime.llm import ask

        return ask(m.lm, question, **kw).result()

    return call


def _images(images):
    return lambda m, d: m.images.ask(QUESTION, images(d))


def _llm(**kw):
    def call(m, d):
        from edgemm.runtime.llm import LanguageModel

        return LanguageModel.load(m.lm.bundle.path, **kw)

    return call


API_CALLS = {
    "transcribe_rate_1": transcribe_rate(1),
    "transcribe_rate_0": transcribe_rate(0),
    "transcribe_rate_nan": transcribe_rate(float("nan")),
    "transcribe_rate_inf": transcribe_rate(float("inf")),
    "transcribe_rate_text": transcribe_rate("16000"),
    "transcribe_file_with_rate": lambda m, d: m.transcriber.transcribe(d / "clip.wav", sample_rate=16000),
    "transcribe_list": lambda m, d: m.transcriber.transcribe([0.0] * 16000),
    "transcribe_none": lambda m, d: m.transcriber.transcribe(None),
    "transcribe_garbage_bytes": lambda m, d: m.transcriber.transcribe(b"not audio at all" * 100),
    "transcribe_wav_bytes": lambda m, d: m.transcriber.transcribe((d / "clip.wav").read_bytes()).text,
    "transcribe_long_array": lambda m, d: m.transcriber.transcribe(
        np.zeros(121 * 60 * 1000, np.float32), sample_rate=1000
    ),
    "transcribe_string_array": lambda m, d: m.transcriber.transcribe(np.array(list("abc"))),
    "transcribe_twice_with_fallback": transcribe_twice_with_fallback,
    "transcribe_bad_options": lambda m, d: m.transcriber.transcribe(d / "clip.wav", options={"vad": False}),
    "ask_too_long": _ask("a" * (MAX_TEXT_CHARS + 1)),
    "ask_none": _ask(None),
    "ask_options_dict": _ask("hi", options={"max_new_tokens": 5}),
    "llm_context_5": _llm(context=5),
    "llm_threads_1000": _llm(threads=1000),
    "images_not_a_list": lambda m, d: m.images.ask(QUESTION, str(d / "cat.png")),
    "images_too_many": _images(lambda d: [d / "cat.png"] * 17),
    "image_float_array": _images(lambda d: [np.zeros((4, 4, 3))]),
}


# --- the files ----------------------------------------------------------------------------------------------------


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (a decompression bomb: refused before any pixel is decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _silence_flac(path: Path, seconds: int, rate: int = 8000) -> None:
    with sf.SoundFile(path, "w", rate, 1, "PCM_16", format="FLAC") as f:
        block = np.zeros(rate * 60, np.int16)
        for _ in range(seconds // 60):
            f.write(block)


def _spoken(text: str):
    from edgemm.runtime import tts

    speech = tts.Synthesizer(varied=False).synthesize(text)
    return speech.samples, speech.sample_rate


def build_files(d: Path, clip: Path, photo: np.ndarray, spoken: bool) -> None:
    """Every input file the cases name, under ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    samples, rate = sf.read(clip, dtype="float32")
    sf.write(d / "clip.wav", samples, rate, subtype="PCM_16")
    (d / "empty.wav").write_bytes(b"")
    (d / "empty.png").write_bytes(b"")
    (d / "text.wav").write_text("this is not audio\n" * 40)
    (d / "text.jpg").write_text("this is not an image\n" * 40)
    for name in ("loop.wav", "loop.png"):
        if not (d / name).is_symlink():
            (d / name).symlink_to(name)
    if not (d / "broken.wav").is_symlink():
        (d / "broken.wav").symlink_to(d / "gone.wav")
    _silence_flac(d / "three-hours.flac", 3 * 3600)
    nan = samples.copy()
    nan[len(nan) // 2] = np.nan
    sf.write(d / "nan.wav", nan, rate, subtype="FLOAT")
    sf.write(d / "loud.wav", samples * 1000, rate, subtype="FLOAT")
    import soxr

    stereo = soxr.resample(samples, rate, 8000)
    sf.write(d / "stereo-8k.wav", np.stack([stereo, stereo * 0.5], axis=1), 8000, subtype="PCM_16")
    (d / "long-line.txt").write_text("x" * (MAX_LINE_CHARS + 10) + "\nWhat is the capital of France?\n")
    (d / "latin1.txt").write_bytes("caf\xe9 ?\n".encode("latin-1") + b"What is the capital of France?\n")
    Image.fromarray(photo).save(d / "cat.png")
    _png_header_only(d / "bomb.png", 30000, 30000)
    camera = d / "camera"
    camera.mkdir(exist_ok=True)
    (camera / "a-broken.jpg").write_text("not a frame")
    Image.fromarray(photo).save(camera / "b-cat.png")
    if spoken:
        question, voice_rate = _spoken(QUESTION)
        pause = np.zeros(voice_rate * 2, np.float32)
        sf.write(d / "two-questions.wav", np.concatenate([pause, question, pause, question, pause]), voice_rate)


def make_fifo(d: Path) -> Path | None:
    """A FIFO at d/fifo.wav (None where the system has none); the caller starts a writer."""
    path = d / "fifo.wav"
    if not hasattr(os, "mkfifo"):
        return None
    if not path.exists():
        os.mkfifo(path)
    return path


def _tampered(source: Path, folder: Path, edit) -> None:
    """A copy of the llm bundle ``source`` with ``edit(folder, manifest)`` applied, its files hashed again."""
    from edgemm.runtime.bundle import file_entry

    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(source, folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"] = {p.name: file_entry(p) for p in sorted(folder.iterdir()) if p.name != MANIFEST}
    edit(folder, manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _set(section, key, value):
    def edit(folder, manifest):
        manifest[section][key] = value

    return edit


def _template(source):
    def edit(folder, manifest):
        (folder / manifest["chat_template"]).write_text(source)
        from edgemm.runtime.bundle import file_entry

        manifest["files"][manifest["chat_template"]] = file_entry(folder / manifest["chat_template"])

    return edit


def _bad_tokenizer(folder, manifest):
    from edgemm.runtime.bundle import file_entry

    (folder / manifest["tokenizer"]).write_text("{ not json")
    manifest["files"][manifest["tokenizer"]] = file_entry(folder / manifest["tokenizer"])


BUNDLE_EDITS = {
    "no-files": lambda folder, manifest: manifest.pop("files"),
    "unlisted": lambda folder, manifest: manifest["files"].pop(manifest["graphs"]["decoder"]),
    "outside": _set("tokenizer", None, None),  # replaced below
    "bad-tokenizer": _bad_tokenizer,
    "negative": _set("model", "hidden_size", -1),
    "text-dim": _set("model", "head_dim", "abc"),
    "range": _template("{% for i in range(100000000) %}{{ i }}{% endfor %}"),
    "loops": _template(
        "{% for a in range(10000) %}{% for b in range(10000) %}{% for c in range(10000) %}"
        "{% endfor %}{% endfor %}{% endfor %}{{ messages[-1]['content'] }}"
    ),
}
BUNDLE_EDITS["outside"] = lambda folder, manifest: manifest.update(tokenizer="../../../../etc/passwd")


def build_bundles(llm: Path, out: Path) -> None:
    """Tampered copies of the llm bundle ``llm`` under ``out`` (one folder per BUNDLE_EDITS entry)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, edit in BUNDLE_EDITS.items():
        _tampered(llm, out / name, edit)


if __name__ == "__main__":
    from skimage import data as skdata

    from edgemm.export.evaluation.clips import dev_clips
    from edgemm.runtime import tts

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "build/bad-inputs")
    build_files(target, dev_clips()[0].path, skdata.chelsea(), spoken=tts.available())
    for case in CASES:
        print(f"{case.name:28} {'edgemm ' + ' '.join(case.argv) if case.argv else case.call}")
    print(f"{len(CASES)} cases; files in {target}")
