"""A newcomer's first five minutes, as the README's Install section has them: a clean venv with only
``pip install .[tts,serve]`` (no torch), one ``edgemm pull`` against a local stand-in for the Hugging Face Hub that
serves this machine's default bundles, then ``ask``, ``transcribe``, ``ask --image``, ``listen`` on files and ``serve``
all work. The other way in, bundle files packed here and installed there, is tested in
tests/hostile/test_bundle_archives.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from edgemm.export.evaluation.clips import dev_clips
from edgemm.export.evaluation.wer import wer
from edgemm.runtime.bundle import MANIFEST, models_dir
from edgemm.runtime.hub import default_names, preset_repo
from tests.harness import edgemm
from tests.hub_double import HubDouble

skdata = pytest.importorskip("skimage.data")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A new venv with edgemm[tts,serve] installed from this checkout, as the README says; no torch."""
    folder = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=120)
    pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*pip, f"{ROOT}[tts,serve]"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def hub():
    names = default_names()
    missing = [name for name in names if not (models_dir() / name / MANIFEST).exists()]
    if missing:
        pytest.skip(f"default bundles missing in {models_dir()}: {missing} (run `make setup`)")
    with HubDouble({preset_repo(name): models_dir() / name for name in names}) as double:
        yield double


def _env(venv: Path, models: Path, hub: HubDouble) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEMM_", "VIRTUAL_ENV", "PYTHON"))}
    path = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return {**env, "PATH": path, "EDGEMM_MODELS": str(models), "HF_ENDPOINT": hub.url, "EDGEMM_PROFILE": "desktop"}


def _run(env: dict, *args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["edgemm", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def test_a_base_install_gets_every_default_bundle_with_one_command_and_then_works(venv, hub, tmp_path):
    env = _env(venv, tmp_path / "models", hub)
    python = str(venv / "bin" / "python")
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0  # really no torch

    doctor = _run(env, "doctor", cwd=tmp_path)  # before: every default missing, each with the command that gets it
    for name in default_names():
        assert f"{name}: edgemm pull {name}" in doctor.stdout, doctor.stdout

    pulled = _run(env, "pull", cwd=tmp_path, timeout=600)
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    assert _run(env, "doctor", cwd=tmp_path).returncode == 0  # every bundle there and verified

    answer = _run(env, "ask", "What is the capital of France?", cwd=tmp_path)
    assert answer.returncode == 0 and "Paris" in answer.stdout, answer.stderr[-2000:]

    clip = dev_clips()[0]
    heard = _run(env, "transcribe", str(clip.path), cwd=tmp_path)
    assert heard.returncode == 0 and wer([clip.text], [heard.stdout]) < 0.2, (heard.stdout, heard.stderr[-2000:])
    here = edgemm("transcribe", clip.path, timeout=300)
    assert heard.stdout == here.stdout  # the same bundle, pulled, transcribes as it does where it was built

    Image.fromarray(skdata.chelsea()).save(tmp_path / "cat.png")
    seen = _run(env, "ask", "What animal is in this picture?", "--image", "cat.png", cwd=tmp_path)
    assert seen.returncode == 0 and "cat" in seen.stdout.lower(), (seen.stdout, seen.stderr[-2000:])

    said = _run(env, "say", "What is the capital of France?", "--out", "question.wav", cwd=tmp_path)
    assert said.returncode == 0, said.stderr[-2000:]
    listened = _run(env, "listen", "--mic", "question.wav", "--speaker", "answer.wav", cwd=tmp_path)
    assert listened.returncode == 0 and "Paris" in listened.stdout, (listened.stdout, listened.stderr[-2000:])
    assert (tmp_path / "answer.wav").stat().st_size > 10_000

    _serves(env, tmp_path)


def _serves(env: dict, cwd: Path) -> None:
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    server = subprocess.Popen(
        ["edgemm", "serve", "--port", port], env=env, cwd=cwd, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        url, deadline, seen = None, time.monotonic() + 180, []
        while url is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            assert line, f"the server stopped: {''.join(seen)[-2000:]}"
            seen.append(line)
            url = next((word.rstrip("/") for word in line.split() if word.startswith("http://")), None)
        assert url, "".join(seen)
        body = json.dumps({"model": "x", "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        request = urllib.request.Request(
            url + "/v1/chat/completions", body.encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            assert "Paris" in json.loads(response.read())["choices"][0]["message"]["content"]
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.wait(30)


def test_a_base_install_runs_as_a_module_and_lists_every_area(venv, tmp_path):
    """`python -m edgemm` is the `edgemm` command; the commands the other areas register are listed without their
    extras (torch), and say in one line what to install."""
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEMM_", "VIRTUAL_ENV", "PYTHON"))}
    helped = subprocess.run([python, "-m", "edgemm", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert helped.returncode == 0, helped.stderr[-2000:]
    for command in ("transcribe", "listen", "export", "distill", "bench", "eval"):
        assert command in helped.stdout, helped.stdout
    export = [python, "-m", "edgemm", "export", "speech", "--out", str(tmp_path / "x")]
    refused = subprocess.run(export, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    (line,) = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and line.startswith("edgemm: error: exporting needs the export extra ("), line
    assert line.endswith("is missing): pip install 'edgemm[export]'"), line
