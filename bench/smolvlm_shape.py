"""A random model with the real shapes of HuggingFaceTB/SmolVLM-256M-Instruct, for speed and memory measurements.

Usage: ``python -m edgemm.bench.smolvlm_shape OUT_DIR [--bundle BUNDLE_DIR]`` (needs the export extra: torch, transformers).

OUT_DIR becomes a transformers folder: an Idefics3 with SmolVLM-256M's sizes (SigLIP vision tower: hidden 768,
MLP 3072, 12 layers, 12 heads, 512 px tiles of 16 px patches; pixel-shuffle connector, scale factor 4, so 64 image
tokens per tile; Llama text model: hidden 576, MLP 1536, 30 layers, 9 heads, 3 KV heads, vocabulary 49280, RoPE
theta 100000, 8192 positions, tied embeddings), random weights (transformers' own initialization, seed 0), and an
Idefics3Processor whose images are resized to 512 px on the longest edge, so one image is exactly one tile. The
chat template is SmolVLM's; the tokenizer is a tiny byte-level BPE (``edgemm.bench.tiny``) with SmolVLM's special
tokens: only the model's vocabulary size is real, so prompts tokenize into more, shorter pieces than SmolVLM's own.

With ``--bundle``, the folder is then exported as ``edgemm export vlm`` does with int4 (MatMulNBits int4 decoder,
int8 dynamic vision graph) into BUNDLE_DIR. The weights are random: the bundle measures speed and memory, nothing
else (its answers are noise).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

SOURCE = "HuggingFaceTB/SmolVLM-256M-Instruct"
TILE = 512
IMAGE_TOKENS = 64  # (512 / 16)^2 patches / scale_factor^2
VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16)
TEXT = dict(
    vocab_size=49280,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    rope_theta=100000.0,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)
SCALE_FACTOR = 4
# SmolVLM-256M-Instruct's chat template.
TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
SPECIALS = (
    "<image>",
    "<fake_token_around_image>",
    "<global-img>",
    "<end_of_utterance>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 5) for c in range(1, 5)),
)

log = logging.getLogger("smolvlm_shape")


def build(out: Path, seed: int = 0) -> Path:
    """Write the random SmolVLM-256M-shaped model and its processor to ``out`` (a transformers folder)."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    from edgemm.bench.tiny import tiny_tokenizer

    corpus = ("The quick brown fox jumps over the lazy dog.", "What animal is this? A cat.", "User Assistant")
    tokenizer = tiny_tokenizer(SPECIALS, eos_token="<end_of_utterance>", chat_template=TEMPLATE, corpus=corpus)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    vision = Idefics3VisionConfig(**VISION, image_size=TILE)
    text = LlamaConfig(**TEXT, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=pad)
    config = Idefics3Config(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        scale_factor=SCALE_FACTOR,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=True,
        pad_token_id=pad,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(size={"longest_edge": TILE}, max_image_size={"longest_edge": TILE}),
        tokenizer=tokenizer,
        image_seq_len=IMAGE_TOKENS,
        chat_template=TEMPLATE,
    )
    params = sum(p.numel() for p in model.parameters())
    log.info("random %s shape: %.1f M parameters -> %s", SOURCE, params / 1e6, out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgemm.bench.smolvlm_shape", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="transformers folder to write")
    p.add_argument("--bundle", type=Path, default=None, help="also export an int4 vlm bundle into this folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    build(args.out, args.seed)
    if args.bundle:
        from edgemm.export.vlm import export_vlm

        log.info("exporting int4 -> %s", args.bundle)
        manifest = export_vlm(str(args.out), "int4", args.bundle, measure=True)
        log.info("fidelity: %s", manifest.get("fidelity"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
