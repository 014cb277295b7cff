"""The default LLM bundle (SmolLM2-135M-Instruct from the packaged GGUF) on real weights."""

import json
import re

import pytest

from edgemm.runtime.bundle import models_dir
from edgemm.runtime.llm.chat import ask
from edgemm.runtime.llm.generate import GenerationOptions
from edgemm.runtime.llm.model import LanguageModel
from tests.harness import edgemm

pytestmark = pytest.mark.slow

# A refusal, or a question back instead of the story ("What kind of story would you like me to tell?").
NOT_A_STORY = re.compile(r"sorry|can't|cannot|as an ai|what kind|would you like|provide", re.IGNORECASE)


def test_capital_of_france(llm_bundle):
    answer = ask(LanguageModel.load(llm_bundle), "What is the capital of France?").result()
    assert "Paris" in answer


@pytest.mark.parametrize(
    "options",
    [
        GenerationOptions(max_new_tokens=60),
        # The README's `edgemm ask "Tell a story." --temperature 0.7 --top-p 0.9 --seed 1 ...` (its first tokens).
        GenerationOptions(max_new_tokens=60, temperature=0.7, top_p=0.9, seed=1, stop=("THE END",)),
    ],
    ids=["greedy", "readme"],
)
def test_a_story_is_told_under_the_default_system_prompt(llm_bundle, options):
    """Under "Answer briefly and factually." alone Qwen2.5-Coder-0.5B refused ('I'm sorry, but I can't assist
    with that.')."""
    story = ask(LanguageModel.load(llm_bundle), "Tell a story.", options).result()
    assert len(story.split()) >= 30 and not NOT_A_STORY.search(story), story


def test_cli_ask_json_answers(llm_bundle):
    out = edgemm("ask", "What is the capital of France?", "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Paris" in json.loads(out.stdout)["answer"]


@pytest.mark.parametrize(
    ("preset", "bound"),
    [
        ("smollm2-135m-instruct-int4", 0.02),
        ("smollm2-135m-instruct-int8", 0.005),
        # A Q4_K_M file imported block for block: the cost is only the int8 activations inside the kernels.
        ("qwen2.5-coder-0.5b-instruct-gguf", 0.01),
        # Built on demand, not by make setup (measured: -0.6%, +0.01%, +0.5%).
        ("qwen2.5-coder-0.5b-instruct-int8", 0.01),
        ("qwen2.5-coder-1.5b-instruct-gguf", 0.01),
        ("qwen2.5-coder-1.5b-instruct-int8", 0.01),
    ],
)
def test_quantized_fidelity_in_manifest(preset, bound):
    path = models_dir() / preset / "manifest.json"
    if not path.exists():
        pytest.skip(f"{path} missing: run `edgemm export llm --preset {preset}` (make setup builds the default ones)")
    fidelity = json.loads(path.read_text())["fidelity"]
    quant = preset.rsplit("-", 1)[1]
    assert fidelity["perplexity_fp32"] < 100  # a real model on real English text
    assert fidelity[f"perplexity_{quant}"] <= fidelity["perplexity_fp32"] * (1 + bound)
    assert fidelity[f"{quant}_vs_fp32"]["token_agreement"] >= 0.9
    assert fidelity["parity_fp32_vs_pytorch"]["max_logit_diff"] < 1e-3


def _preset_bundle(name: str):
    path = models_dir() / name
    if not (path / "manifest.json").exists():
        pytest.skip(f"{path} missing: run `make setup`")
    return path


def test_qwen_gguf_bundle_answers():
    lm = LanguageModel.load(_preset_bundle("qwen2.5-coder-0.5b-instruct-gguf"))
    assert "Paris" in ask(lm, "What is the capital of France?").result()
    assert "84" in ask(lm, "What is 12 times 7? Answer with the number only.").result()


def test_qwen_gguf_bundle_keeps_the_files_blocks():
    manifest = json.loads((_preset_bundle("qwen2.5-coder-0.5b-instruct-gguf") / "manifest.json").read_text())
    assert manifest["quantization"]["scheme"] == "gguf"
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0"} <= set(manifest["quantization"]["source_blocks"])


def test_anticipated_words_read_complete_or_not_and_prefill_the_answer(llm_bundle):
    """The LLM's probability that the user's message ends after the words so far: low for the start of a question,
    high for the whole one, the transcriber's punctuation aside; the answer then runs only the tokens after them."""
    from edgemm.runtime.llm import Chat, GenerationOptions, PromptError

    chat = Chat(LanguageModel.load(llm_bundle, threads=2), options=GenerationOptions(max_new_tokens=8))
    start = chat.anticipate("What is the capital of")
    # Whisper writes "of?". Read again from the cache, a probability this small moves by up to ~10% (the int8
    # activations), far below the 0.05 that matters: 3.4e-5 then 3.7e-5 under the default system prompt.
    assert chat.anticipate("What is the capital of?") == pytest.approx(start, rel=0.05, abs=1e-3)
    whole = chat.anticipate("What is the capital of France")
    assert start < 0.05 < 0.3 < whole <= 1.0, (start, whole)
    with pytest.raises(PromptError, match="the prompt is empty"):
        chat.anticipate("   ")
    answer = chat.send("What is the capital of France?")
    assert "Paris" in answer.result()
    assert answer.stats.prefilled_tokens <= 8, answer.stats  # the question was already in the cache


def test_a_prompt_read_ahead_starts_its_answer_at_once(llm_bundle):
    """``read_ahead`` in steps of a few tokens, then of the whole prompt (the answer's header too): the answer
    runs no prompt token and is the answer of a cold cache, token for token. Anything run on the cache after it
    (another question judged) drops the kept logits, and the next answer runs its prompt again."""
    from edgemm.runtime.llm import Chat, GenerationOptions

    lm = LanguageModel.load(llm_bundle, threads=2)
    options = GenerationOptions(max_new_tokens=12)
    cold = Chat(lm, options=options).send("What is the capital of France?")
    cold.result()
    chat = Chat(lm, options=options)
    steps = 1
    while not chat.read_ahead("What is the capital of France?", max_tokens=8):
        steps += 1
    assert steps >= 3 and chat.cache.next_logits is None  # the user's message only: the header is not run
    assert chat.read_ahead("What is the capital of France?", answer=True)
    warm = chat.send("What is the capital of France?")
    assert warm.result() == cold.text and warm.tokens == cold.tokens and "Paris" in warm.text
    assert warm.stats.prefilled_tokens == 0, warm.stats
    chat.forget_last()
    assert chat.read_ahead("What is the capital of France?", answer=True)
    chat.anticipate("What is two plus")  # the same cache, another prompt: the kept logits are gone
    again = chat.send("What is the capital of France?")
    assert again.result() == cold.text and again.stats.prefilled_tokens > 0, again.stats


def test_a_bounded_history_keeps_the_latest_turns_and_its_caches_small(llm_bundle):
    """Past ``history`` tokens of earlier turns the oldest go, down to half of it: a conversation of any length
    keeps its KV cache within the system prompt, the history, one message and its answer. ``prepare`` (between
    turns) does the dropping and runs what is left, so the next question runs only its own tokens."""
    from edgemm.runtime.errors import OptionsError
    from edgemm.runtime.llm import Chat

    lm = LanguageModel.load(llm_bundle, threads=2)
    options = GenerationOptions(max_new_tokens=8)
    bare = len(Chat(lm).encode(Chat(lm).messages([], None)))
    chat = Chat(lm, options=options, history=120)
    longest = 0
    for i in range(14):
        chat.remember(f"Question number {i}: what is {i} plus {i}?", f"{i} plus {i} is {2 * i}.")
        chat.prepare()
        held = len(chat.encode(chat.messages(chat.turns, None))) - bare
        assert held <= 120, (i, held)
        answer = chat.send(f"What is {i} times two?")
        answer.result()
        assert answer.stats.prefilled_tokens <= 20, (i, answer.stats)  # the question only: the turns were in
        longest = max(longest, chat.cache.length)
        chat.forget_last()
    assert chat.turns[-1][0].startswith("Question number 13")
    assert 2 <= len(chat.turns) < 14
    assert longest <= bare + 120 + 20 + 8, longest
    with pytest.raises(OptionsError, match="history"):
        Chat(lm, history=-1)
