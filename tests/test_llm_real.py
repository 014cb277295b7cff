"""The default LLM bundle (SmolLM2-135M-Instruct from the packaged GGUF) on real weights."""

import json
import subprocess
import sys

import pytest

from edgemm.runtime.bundle import models_dir
from edgemm.runtime.llm.chat import ask
from edgemm.runtime.llm.model import LanguageModel

pytestmark = pytest.mark.slow


def test_capital_of_france(llm_bundle):
    answer = ask(LanguageModel.load(llm_bundle), "What is the capital of France?").result()
    assert "Paris" in answer


def test_cli_ask_json_answers(llm_bundle):
    out = subprocess.run(
        [sys.executable, "-m", "edgemm.runtime.cli", "ask", "What is the capital of France?", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "Paris" in json.loads(out.stdout)["answer"]


@pytest.mark.parametrize(
    ("preset", "bound"), [("smollm2-135m-instruct-int4", 0.02), ("smollm2-135m-instruct-int8", 0.005)]
)
def test_quantized_fidelity_in_manifest(preset, bound):
    path = models_dir() / preset / "manifest.json"
    if not path.exists():
        pytest.skip(f"{path} missing: run `make setup`")
    fidelity = json.loads(path.read_text())["fidelity"]
    quant = preset.rsplit("-", 1)[1]
    assert fidelity["perplexity_fp32"] < 100  # a real model on real English text
    assert fidelity[f"perplexity_{quant}"] <= fidelity["perplexity_fp32"] * (1 + bound)
    assert fidelity[f"{quant}_vs_fp32"]["token_agreement"] >= 0.9
    assert fidelity["parity_fp32_vs_pytorch"]["max_logit_diff"] < 1e-3
