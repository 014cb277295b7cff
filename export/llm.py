"""``edgemm export llm``: causal LM source -> ONNX bundle (fp32 / int8 / int4) with measured fidelity.

Fidelity in the manifest:
- fp32 graphs vs PyTorch: max logit difference and greedy tokens (must be identical).
- perplexity of fp32 and of the quantized graphs on a held-out published English text (the GNU GPL v3 as shipped by
  Debian's base-files package), and teacher-forced greedy-token agreement of the quantized graphs with fp32 on a
  fixed prompt set (the fp32 greedy answers).
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edgemm.export.bundle import staging, write_manifest
from edgemm.export.llm_onnx import BLOCK, SCHEMES, build_decoder, build_embed, save
from edgemm.export.llm_source import LLMCheckpoint, decoder_config, decoder_weights, load_llm, save_tokenizer
from edgemm.runtime.bundle import open_bundle
from edgemm.runtime.llm.chat import Chat
from edgemm.runtime.llm.generate import Generation, GenerationOptions
from edgemm.runtime.llm.model import LanguageModel

log = logging.getLogger(__name__)

QUANTS = tuple(SCHEMES)
HELD_OUT_TEXT = Path("/usr/share/common-licenses/GPL-3")
PPL_WINDOW, PPL_WINDOWS = 512, 4  # perplexity over 4 windows of 512 tokens
PROMPTS = [
    "What is the capital of France?",
    "Explain in two sentences why the sky is blue.",
    "Write a haiku about the sea.",
    "List three uses of a paperclip.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
    "Who wrote Romeo and Juliet?",
    "Give one tip for sleeping better.",
]
AGREEMENT_TOKENS = 48


class ExportError(RuntimeError):
    """The exported graphs do not reproduce the source model."""


def held_out_text(path: Path = HELD_OUT_TEXT) -> str:
    """The text with hard line wraps joined into paragraphs."""
    if not path.exists():
        raise ExportError(f"{path} is missing (Debian's base-files package ships it); use --no-fidelity")
    paragraphs = re.split(r"\n\s*\n", path.read_text())
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def perplexity(lm: LanguageModel, ids: list[int]) -> float:
    """exp(mean negative log-likelihood) over consecutive windows, each scored from a fresh cache."""
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, PPL_WINDOW):
        window = ids[start : start + PPL_WINDOW]
        if len(window) < 2:
            break
        cache = lm.new_cache()
        logits = lm.prefill_tokens(window, cache, all_logits=True).astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        nll -= float(logp[np.arange(len(window) - 1), window[1:]].sum())
        count += len(window) - 1
    return math.exp(nll / count)


def greedy_answers(lm: LanguageModel, n_tokens: int = AGREEMENT_TOKENS) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, greedy answer ids) for every prompt of the fixed set."""
    out = []
    options = GenerationOptions(max_new_tokens=n_tokens)
    for question in PROMPTS:
        chat = Chat(lm, options=options)
        gen = chat.send(question)
        gen.result()
        out.append((gen.prompt, gen.tokens))
    return out


def agreement(lm: LanguageModel, reference: list[tuple[list[int], list[int]]]) -> dict:
    """Teacher-forced top-1 agreement with the reference answers, and how many answers are identical."""
    match = total = identical = 0
    for prompt, answer in reference:
        if not answer:
            continue
        cache = lm.new_cache()
        logits = lm.prefill_tokens(prompt + answer[:-1], cache, all_logits=True)
        picks = logits[len(prompt) - 1 :].argmax(axis=-1)
        match += int((picks == np.array(answer)).sum())
        total += len(answer)
        gen = Generation(lm, lm.new_cache(), prompt, GenerationOptions(max_new_tokens=len(answer)))
        gen.result()
        identical += gen.tokens == answer
    return {"token_agreement": round(match / max(total, 1), 4), "identical_answers": f"{identical}/{len(reference)}"}


@torch.no_grad()
def check_parity(ck: LLMCheckpoint, folder: Path, n_tokens: int = 32) -> dict:
    """fp32 graphs vs PyTorch: logits on a chat prompt, and greedy tokens from transformers' generate."""
    lm = LanguageModel.load(folder)
    prompt = Chat(lm).encode([{"role": "user", "content": PROMPTS[1]}])
    ref_logits = ck.model(torch.tensor([prompt])).logits[0].numpy()
    ours = lm.prefill_tokens(prompt, lm.new_cache(), all_logits=True)
    diff = float(np.abs(ours - ref_logits).max())
    ids = torch.tensor([prompt])
    ref = ck.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_tokens, do_sample=False)
    ref = ref[0, len(prompt) :].tolist()
    ref = [t for t in ref if t not in lm.eos_ids]  # generate ends with an eos token (or pads after it)
    gen = Generation(lm, lm.new_cache(), prompt, GenerationOptions(max_new_tokens=n_tokens))
    gen.result()
    same = gen.tokens == ref
    if not same or diff > 1e-3:
        raise ExportError(f"fp32 graphs differ from PyTorch: max logit diff {diff:.2e}, greedy tokens equal: {same}")
    return {"max_logit_diff": float(f"{diff:.3g}"), "greedy_tokens_identical": len(ref)}


def write_graphs(folder: Path, cfg, weights, quant: str) -> None:
    bits, lm_bits = SCHEMES[quant]
    save(build_embed(cfg, weights, lm_bits), folder / "embed.onnx")
    save(build_decoder(cfg, weights, bits, lm_bits), folder / "decoder.onnx")


def quantization_info(quant: str, ck: LLMCheckpoint) -> dict:
    bits, lm_bits = SCHEMES[quant]
    if bits is None:
        return {"scheme": "fp32"}
    return {
        "scheme": quant,
        "linear": f"MatMulNBits {bits}-bit, blocks of {BLOCK}, "
        + ("asymmetric + per-block offset correction" if bits == 4 else "symmetric"),
        "embedding_and_lm_head": f"{lm_bits}-bit, blocks of {BLOCK}, symmetric",
        "activations": "int8 inside MatMulNBits (accuracy_level 4)",
        "source_blocks": ck.gguf_types,
    }


def export_llm(source: str, quant: str, out: Path, measure: bool = True) -> dict:
    if quant not in QUANTS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTS)}, not {quant!r}")
    ck = load_llm(source)
    cfg = decoder_config(ck.model.config)
    weights = decoder_weights(ck.model.model, ck.model.lm_head, cfg)
    body = {
        "name": out.name,
        "source": source,
        "model": {"architecture": ck.model.config.model_type, **cfg.as_dict()},
        "graphs": {"embed": "embed.onnx", "decoder": "decoder.onnx"},
        "special_tokens": ck.special_tokens(),
        "quantization": quantization_info(quant, ck),
    }
    with staging(out) as work:
        fp32 = work / "fp32" if quant != "fp32" else work
        fp32.mkdir(exist_ok=True)
        body.update(save_tokenizer(ck, fp32))
        log.info("building fp32 graphs")
        write_graphs(fp32, cfg, weights, "fp32")
        write_manifest(fp32, "llm", {**body, "quantization": {"scheme": "fp32"}})
        parity = check_parity(ck, fp32)
        log.info("fp32 parity with PyTorch: %s", parity)
        body["fidelity"] = {"parity_fp32_vs_pytorch": parity}
        if quant != "fp32":
            log.info("building %s graphs", quant)
            for name in ("tokenizer.json", "chat_template.jinja"):
                shutil.copy(fp32 / name, work / name)
            write_graphs(work, cfg, weights, quant)
            write_manifest(work, "llm", body)
        if measure:
            body["fidelity"].update(measure_fidelity(fp32, work if quant != "fp32" else None, quant))
        if quant != "fp32":
            shutil.rmtree(fp32)
        manifest = write_manifest(work, "llm", body)
    open_bundle(out, "llm")
    return manifest


def measure_fidelity(fp32: Path, quantized: Path | None, quant: str) -> dict:
    text = held_out_text()
    result = {"held_out_text": f"{HELD_OUT_TEXT} (Debian base-files)"}
    models = {"fp32": fp32} | ({quant: quantized} if quantized else {})
    reference = None
    for name, folder in tqdm(models.items(), desc="fidelity", leave=False):
        lm = LanguageModel.load(folder)
        ids = lm.tokenizer.encode(text, add_special_tokens=False).ids[: PPL_WINDOW * PPL_WINDOWS + 1]
        result["perplexity_tokens"] = len(ids) - 1
        result[f"perplexity_{name}"] = round(perplexity(lm, ids), 4)
        if name == "fp32":
            reference = greedy_answers(lm)
        else:
            result[f"{name}_vs_fp32"] = agreement(lm, reference)
            result[f"{name}_perplexity_increase"] = round(
                result[f"perplexity_{name}"] / result["perplexity_fp32"] - 1, 4
            )
    return result
