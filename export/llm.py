"""``edgemm export llm``: causal LM source -> ONNX bundle (fp32 / int8 / int4) with measured fidelity.

Fidelity in the manifest:
- fp32 graphs vs PyTorch: max logit difference and greedy tokens (must be identical).
- perplexity of fp32 and of the quantized graphs on a held-out published English text (the GNU GPL v3 as shipped by
  Debian's base-files package), and teacher-forced greedy-token agreement of the quantized graphs with fp32 on a
  fixed prompt set (the fp32 greedy answers).

Steps (run by export/driver.py): load the checkpoint, run PyTorch on the parity prompt, build the fp32 and the
quantized graphs, release the PyTorch model, check the fp32 graphs against PyTorch's outputs, measure perplexity and
agreement. The PyTorch model (with the weights, which are views of its tensors) and the onnxruntime sessions are
never held together: peak memory is about the fp32 weights once, plus what building one graph needs.
"""

from __future__ import annotations

import gc
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edgemm.export.driver import Component, ExportJob, Step, build
from edgemm.export.errors import ExportError
from edgemm.export.llm_onnx import (
    BLOCK,
    SCHEMES,
    DecoderConfig,
    DecoderWeights,
    build_decoder,
    build_embed,
    mixed_precision,
    write_graph,
)
from edgemm.export.llm_source import (
    LLMCheckpoint,
    decoder_config,
    decoder_weights,
    gguf_packed_weights,
    load_llm,
    save_tokenizer,
)
from edgemm.runtime.bundle import Bundle
from edgemm.runtime.llm.chat import Chat, ChatTemplate
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


def held_out_text(path: Path = HELD_OUT_TEXT) -> str:
    """The text with hard line wraps joined into paragraphs."""
    if not path.exists():
        raise ExportError(f"{path} is missing (Debian's base-files package ships it); use --no-fidelity")
    paragraphs = re.split(r"\n\s*\n", path.read_text())
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def perplexity(lm: LanguageModel, ids: list[int]) -> float:
    """exp(mean negative log-likelihood) over consecutive windows, each scored from a fresh cache."""
    nll, count = 0.0, 0
    for start in tqdm(range(0, len(ids) - 1, PPL_WINDOW), desc="perplexity", leave=False):
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
    for question in tqdm(PROMPTS, desc="greedy answers", leave=False):
        chat = Chat(lm, options=options)
        gen = chat.send(question)
        gen.result()
        out.append((gen.prompt, gen.tokens))
    return out


def agreement(lm: LanguageModel, reference: list[tuple[list[int], list[int]]]) -> dict:
    """Teacher-forced top-1 agreement with the reference answers, and how many answers are identical."""
    match = total = identical = 0
    for prompt, answer in tqdm(reference, desc="agreement", leave=False):
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


@dataclass
class Reference:
    """What PyTorch computes for the parity check, kept so that the check can run after the model is released."""

    prompt: list[int]  # a chat prompt, encoded as the runtime encodes it
    logits: np.ndarray  # [len(prompt), V]
    tokens: list[int]  # transformers' greedy continuation, without its end-of-sequence tokens
    max_new_tokens: int  # the length generate was given


@torch.no_grad()
def pytorch_reference(ck: LLMCheckpoint, bundle: Bundle, n_tokens: int = 32) -> Reference:
    """Logits on a chat prompt (encoded with the bundle's own template and tokenizer) and greedy tokens from
    transformers' generate."""
    m = bundle.manifest
    template = ChatTemplate(bundle.text(m["chat_template"]), m["special_tokens"])
    prompt = template.encode(bundle.tokenizer(m["tokenizer"]), [{"role": "user", "content": PROMPTS[1]}])
    ids = torch.tensor([prompt])
    logits = ck.model(ids).logits[0].numpy()
    out = ck.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_tokens, do_sample=False)
    eos = set(m["special_tokens"]["eos_token_ids"])
    tokens = [t for t in out[0, len(prompt) :].tolist() if t not in eos]  # generate ends with eos (or pads after it)
    return Reference(prompt, logits, tokens, n_tokens)


def check_parity(reference: Reference, bundle: Bundle) -> dict:
    """fp32 graphs vs PyTorch: the logits on the reference prompt, and its greedy tokens."""
    lm = LanguageModel(bundle)
    ours = lm.prefill_tokens(reference.prompt, lm.new_cache(), all_logits=True)
    diff = float(np.abs(ours - reference.logits).max())
    options = GenerationOptions(max_new_tokens=reference.max_new_tokens)
    gen = Generation(lm, lm.new_cache(), reference.prompt, options)
    gen.result()
    same = gen.tokens == reference.tokens
    if not same or diff > 1e-3:
        raise ExportError(f"fp32 graphs differ from PyTorch: max logit diff {diff:.2e}, greedy tokens equal: {same}")
    return {"max_logit_diff": float(f"{diff:.3g}"), "greedy_tokens_identical": len(reference.tokens)}


def write_graphs(folder: Path, cfg, weights, quant: str) -> None:
    """embed.onnx and decoder.onnx, each with its weights written to its side file as the graph is built."""
    bits, lm_bits = SCHEMES[quant]
    write_graph(folder / "embed.onnx", lambda data: build_embed(cfg, weights, lm_bits, data))
    write_graph(folder / "decoder.onnx", lambda data: build_decoder(cfg, weights, bits, lm_bits, data))


def quantization_info(quant: str, ck: LLMCheckpoint) -> dict:
    bits, lm_bits = SCHEMES[quant]
    if quant == "gguf":
        return {
            "scheme": "gguf",
            "linear": "the GGUF's own blocks, not rounded again: 4-bit types as MatMulNBits 4-bit, 5-, 6- and 8-bit "
            "types as 8-bit; asymmetric types (Q4_1, Q4_K, ...) with a per-block offset correction",
            "embedding_and_lm_head": "the GGUF's own blocks (one byte per value)",
            "activations": "int8 inside MatMulNBits (accuracy_level 4)",
            "source_blocks": ck.gguf_types,
        }
    if bits is None:
        return {"scheme": "fp32"}
    linear = f"MatMulNBits {bits}-bit, blocks of {BLOCK}, " + (
        "asymmetric (clip-searched range) + per-block offset correction" if bits == 4 else "symmetric"
    )
    if quant == "int4-mixed":
        linear += "; v_proj in every layer and down_proj in the first and last eighth of the layers and every third"
        linear += " in between: 8-bit symmetric"
    return {
        "scheme": quant,
        "linear": linear,
        "embedding_and_lm_head": f"{lm_bits}-bit, blocks of {BLOCK}, symmetric",
        "activations": "int8 inside MatMulNBits (accuracy_level 4)",
        "source_blocks": ck.gguf_types,
    }


def measure_fidelity(fp32: Bundle, quantized: Bundle | None, quant: str) -> dict:
    text = held_out_text()
    result = {"held_out_text": f"{HELD_OUT_TEXT} (Debian base-files)"}
    models = {"fp32": fp32} | ({quant: quantized} if quantized else {})
    reference = None
    for name, bundle in models.items():
        lm = LanguageModel(bundle)
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
        del lm  # one model's sessions at a time (the fp32 decoder of a 1.5B model takes 7 GB)
    return result


def graphs_megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.glob("*.onnx*")) / 1e6


# ---- the steps ----


@dataclass
class LoadedLLM:
    checkpoint: LLMCheckpoint | None  # None once released (see release)
    config: DecoderConfig
    weights: DecoderWeights | None  # views of the checkpoint's own tensors
    reference: Reference | None = None


def load(job: ExportJob) -> str:
    """The checkpoint and its weights, its tokenizer and chat template (written into the bundle), the manifest's
    description."""
    ck = load_llm(job.source)
    if job.quant == "gguf" and ck.gguf_path is None:
        raise ExportError(
            f"{job.source}: the gguf recipe keeps a GGUF file's own blocks; this source is not a GGUF file"
        )
    cfg = decoder_config(ck.model.config)
    job.loaded = LoadedLLM(ck, cfg, decoder_weights(ck.model.model, ck.model.lm_head, cfg))
    job.body.update(
        {
            "model": {"architecture": ck.model.config.model_type, **cfg.as_dict()},
            "graphs": {"embed": "embed.onnx", "decoder": "decoder.onnx"},
            "special_tokens": ck.special_tokens(),
            "quantization": quantization_info(job.quant, ck),
        }
    )
    job.body.update(save_tokenizer(ck, job.work))
    params = sum(p.numel() for p in ck.model.parameters())
    return f"{job.source}: {ck.model.config.model_type}, {params / 1e6:.1f} M parameters"


def reference(job: ExportJob) -> str:
    ref = pytorch_reference(job.loaded.checkpoint, job.bundle())
    job.loaded.reference = ref
    return f"{len(ref.prompt)} prompt tokens, {len(ref.tokens)} greedy tokens"


def release(job: ExportJob) -> None:
    """Drop the PyTorch model and its weights (the graphs are written): the checks that follow hold onnxruntime
    sessions instead, and a 1.5B model's fp32 weights and its fp32 decoder session are 7 GB each."""
    job.loaded.checkpoint = job.loaded.weights = None
    gc.collect()  # transformers' modules hold reference cycles


def fp32_graphs(job: ExportJob) -> str:
    write_graphs(job.fp32, job.loaded.config, job.loaded.weights, "fp32")
    return f"{graphs_megabytes(job.fp32):.0f} MB"


def parity(job: ExportJob) -> str:
    release(job)
    result = check_parity(job.loaded.reference, job.bundle(fp32=True))
    job.fidelity["parity_fp32_vs_pytorch"] = result
    return f"max logit diff {result['max_logit_diff']:.2e}, {result['greedy_tokens_identical']} greedy tokens equal"


def quantized_graphs(job: ExportJob) -> str:
    loaded = job.loaded
    weights = loaded.weights
    if job.quant == "gguf":
        weights = gguf_packed_weights(loaded.checkpoint, loaded.config, weights)
    elif job.quant == "int4-mixed":
        weights = mixed_precision(weights)
    write_graphs(job.work, loaded.config, weights, job.quant)
    return f"{graphs_megabytes(job.work):.0f} MB"


def fidelity(job: ExportJob) -> str:
    quantized = job.bundle() if job.quant != "fp32" else None
    result = measure_fidelity(job.bundle(fp32=True), quantized, job.quant)
    job.fidelity.update(result)
    line = f"perplexity fp32 {result['perplexity_fp32']}"
    if quantized:
        q = job.quant
        agree = result[f"{q}_vs_fp32"]
        line += (
            f", {q} {result[f'perplexity_{q}']} ({result[f'{q}_perplexity_increase']:+.2%}); "
            f"token agreement {agree['token_agreement']}, identical answers {agree['identical_answers']}"
        )
    return line


LLM = Component(
    kind="llm",
    quants=QUANTS,
    steps=(
        Step("load checkpoint", load),
        Step("run the PyTorch reference", reference),
        Step("build fp32 graphs", fp32_graphs),
        Step("build quantized graphs", quantized_graphs, quantized_only=True),
        Step("check parity with PyTorch", parity),
        Step("measure fidelity", fidelity, measurement=True),
    ),
)


def export_llm(source: str, quant: str, out: Path, measure: bool = True) -> dict:
    """Build an llm bundle at ``out`` from a Llama / Qwen2 source; return its manifest."""
    return build(LLM, source, quant, out, measure)
