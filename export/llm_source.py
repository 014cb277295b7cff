"""Load a Llama / Qwen2-family causal LM: a Hugging Face id or folder, a GGUF file, or a packaged GGUF checkpoint.

The result holds the PyTorch model (the reference the export is checked against), its tokenizer saved as
``tokenizer.json``, the checkpoint's own chat template and its special tokens.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from edgemm.export.llm_onnx import DecoderConfig, DecoderWeights
from edgemm.export.packaged import SourceError, resolve_packaged
from edgemm.export.quiet import library_progress_bar_hidden

log = logging.getLogger(__name__)

FAMILIES = ("llama", "qwen2")


@dataclass
class LLMCheckpoint:
    model: torch.nn.Module  # *ForCausalLM, fp32, eval mode
    tokenizer: object  # transformers PreTrainedTokenizerFast
    source: str
    gguf_types: dict[str, int] | None = None  # tensor type counts of a GGUF source (e.g. {"Q4_1": 210})
    gguf_path: Path | None = None  # the GGUF file itself
    byte_level: bool = False  # a GGUF "gpt2" (byte-level BPE) vocabulary: its decoder is rewritten on save

    @property
    def chat_template(self) -> str | None:
        return self.tokenizer.chat_template

    def special_tokens(self) -> dict:
        tok, gen = self.tokenizer, self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else tok.eos_token_id
        eos_ids = sorted({int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None})
        if tok.eos_token_id is not None and tok.eos_token_id not in eos_ids:
            eos_ids.append(int(tok.eos_token_id))
        return {
            "bos_token": tok.bos_token,
            "bos_token_id": tok.bos_token_id,
            "eos_token": tok.eos_token,
            "eos_token_ids": eos_ids,
            "pad_token_id": tok.pad_token_id,
        }


def _gguf_file(source: str) -> Path | None:
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        has_hf = (path / "config.json").exists()
        if found and not has_hf:
            return found[0]
    return None


def _gguf_info(path: Path) -> tuple[dict[str, int], dict]:
    """Tensor type counts and the tokenizer fields (model, bos/eos ids) of a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(path)
    counts: dict[str, int] = {}
    for t in reader.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    arch = reader.fields.get("general.architecture")
    if arch is None or arch.contents() not in FAMILIES:
        found = arch.contents() if arch is not None else "none"
        raise SourceError(f"{path}: GGUF architecture {found!r} is not supported ({', '.join(FAMILIES)})")
    fields = {}
    for key in ("model", "bos_token_id", "eos_token_id"):
        field = reader.fields.get(f"tokenizer.ggml.{key}")
        if field is not None:
            fields[key] = field.contents()
    return counts, fields


def _fix_gguf_tokens(model, tokenizer, fields: dict) -> None:
    """transformers' GGUF tokenizer conversion can name the wrong special tokens; the GGUF's own ids win."""
    for key in ("bos", "eos"):
        token_id = fields.get(f"{key}_token_id")
        if token_id is not None:
            setattr(tokenizer, f"{key}_token", tokenizer.convert_ids_to_tokens(int(token_id)))
    if fields.get("eos_token_id") is not None:
        model.generation_config.eos_token_id = int(fields["eos_token_id"])


def _from_gguf(path: Path):
    """transformers dequantizes GGUF blocks to fp32; rebuild a plain model around the same tensors (a skeleton
    with uninitialized weights that takes the loaded ones as they are: the weights are held once, not copied)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_utils import no_init_weights

    log.debug("loading %s (GGUF, dequantized to fp32)", path.name)
    with library_progress_bar_hidden():  # its "Converting and de-quantizing GGUF tensors" bar
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with no_init_weights():
        model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()  # assign gives tied weights one parameter each; tie them again
    model.generation_config = loaded.generation_config
    return model, tokenizer


def load_llm(source: str) -> LLMCheckpoint:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_types, byte_level = None, False
    packaged = resolve_packaged(source.removeprefix("packaged:"))[0] if source.startswith("packaged:") else None
    gguf_path = _gguf_file(str(packaged) if packaged else source)
    local = Path(source).expanduser()
    if packaged is None and not local.exists() and (local.suffix == ".gguf" or source.startswith(("/", ".", "~"))):
        raise SourceError(f"{source}: no such file or folder")
    try:
        if gguf_path is not None:
            try:
                gguf_types, fields = _gguf_info(gguf_path)
            except (ValueError, KeyError, IndexError) as e:  # what the gguf reader raises for damaged files
                raise SourceError(f"{gguf_path}: not a readable GGUF file ({e})") from None
            model, tokenizer = _from_gguf(gguf_path)
            _fix_gguf_tokens(model, tokenizer, fields)
            byte_level = fields.get("model") == "gpt2"
        elif packaged is not None:
            raise SourceError(f"{source}: no .gguf file in {packaged}")
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(source)
    except (
        OSError,
        ValueError,
        KeyError,
        IndexError,
        RuntimeError,
    ) as e:  # missing files, no network, bad repo id, damaged data
        raise SourceError(f"cannot load {source!r}: {str(e).splitlines()[0]}") from None
    if model.config.model_type not in FAMILIES:
        raise SourceError(f"{source}: model type {model.config.model_type!r} is not supported ({', '.join(FAMILIES)})")
    if not tokenizer.is_fast:
        raise SourceError(f"{source}: needs a fast (tokenizers) tokenizer")
    model.eval()
    return LLMCheckpoint(
        model,
        tokenizer,
        source,
        gguf_types=gguf_types,
        gguf_path=gguf_path if gguf_types else None,
        byte_level=byte_level,
    )


def decoder_config(c) -> DecoderConfig:
    """From a Llama / Qwen2 text config."""
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if getattr(c, "use_sliding_window", False):
        raise SourceError("sliding-window attention is not supported")
    return DecoderConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_layers=c.num_hidden_layers,
        num_heads=c.num_attention_heads,
        num_kv_heads=c.num_key_value_heads,
        head_dim=head_dim,
        intermediate_size=c.intermediate_size,
        rms_eps=float(c.rms_norm_eps),
        max_positions=c.max_position_embeddings,
        attention_bias=c.model_type == "qwen2" or bool(getattr(c, "attention_bias", False)),
    )


def _np(t: torch.Tensor) -> np.ndarray:
    """A float32 numpy view of ``t``: the same memory for a float32 contiguous tensor (a model's weights), so that
    the model and its weights are held once. Read-only, as the model's own weights must stay."""
    array = t.detach().to(torch.float32).contiguous().numpy()
    array.flags.writeable = False
    return array


@torch.no_grad()
def decoder_weights(base, lm_head, cfg: DecoderConfig) -> DecoderWeights:
    """Weights of a LlamaModel / Qwen2Model ``base`` and its ``lm_head`` in Hugging Face layout (lm_head untied),
    with the model's own rotary tables (any rope scaling)."""
    layers = []
    for layer in base.layers:
        a, m = layer.self_attn, layer.mlp
        lw = {
            "input_norm": _np(layer.input_layernorm.weight),
            "post_norm": _np(layer.post_attention_layernorm.weight),
            "q": _np(a.q_proj.weight),
            "k": _np(a.k_proj.weight),
            "v": _np(a.v_proj.weight),
            "o": _np(a.o_proj.weight),
            "gate": _np(m.gate_proj.weight),
            "up": _np(m.up_proj.weight),
            "down": _np(m.down_proj.weight),
        }
        if cfg.attention_bias:
            for name in ("q", "k", "v"):
                bias = getattr(a, f"{name}_proj").bias
                lw[f"{name}_bias"] = _np(bias) if bias is not None else np.zeros(lw[name].shape[0], np.float32)
        if getattr(a.o_proj, "bias", None) is not None:
            raise SourceError("o_proj bias is not supported")
        layers.append(lw)
    positions = torch.arange(cfg.max_positions)[None]
    cos, sin = base.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)
    half = cfg.head_dim // 2
    return DecoderWeights(
        embed=_np(base.embed_tokens.weight),
        lm_head=_np(lm_head.weight),
        final_norm=_np(base.norm.weight),
        layers=layers,
        cos=_np(cos[0, :, :half]),
        sin=_np(sin[0, :, :half]),
    )


def save_tokenizer(ck: LLMCheckpoint, folder: Path) -> dict:
    """Write tokenizer.json (+ the chat template) into ``folder``; return manifest entries."""
    with tempfile.TemporaryDirectory() as tmp:
        ck.tokenizer.save_pretrained(tmp)
        spec = json.loads((Path(tmp) / "tokenizer.json").read_text())
        cfg = json.loads((Path(tmp) / "tokenizer_config.json").read_text())
    if ck.byte_level:
        # transformers converts a GGUF byte-level BPE vocabulary with a sentencepiece-style decoder (it would turn a
        # literal "\u2581" into a space); byte-level BPE decodes with ByteLevel alone.
        spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    template = ck.chat_template or cfg.get("chat_template")
    if not template:
        raise SourceError(f"{ck.source}: the checkpoint has no chat template")
    (folder / "chat_template.jinja").write_text(template)
    return {"tokenizer": "tokenizer.json", "chat_template": "chat_template.jinja"}


# ---- a GGUF source's own blocks (the "gguf" recipe: no second rounding) ----

_GGUF_NAMES = {  # DecoderWeights layer key -> GGUF tensor name
    "q": "attn_q",
    "k": "attn_k",
    "v": "attn_v",
    "o": "attn_output",
    "gate": "ffn_gate",
    "up": "ffn_up",
    "down": "ffn_down",
}


def _unpermute_rows(n: int, heads: int) -> np.ndarray:
    """Row order that undoes llama.cpp's q/k interleaving of rotary halves for the llama architecture."""
    return np.arange(n).reshape(heads, n // heads // 2, 2).swapaxes(1, 2).reshape(n)


CHECK_ROWS = 4096  # rows of a weight compared with the GGUF's blocks at a time


def gguf_packed_weights(ck: LLMCheckpoint, cfg: DecoderConfig, weights: DecoderWeights) -> DecoderWeights:
    """``weights`` with every quantized matrix replaced by its GGUF blocks, packed for MatMulNBits as they are.

    Each one is checked against the dequantized weight the PyTorch model holds: the blocks must give the same values
    bit for bit (and after packing, to float32 rounding)."""
    import gguf

    from edgemm.export import gguf_blocks

    reader = gguf.GGUFReader(ck.gguf_path)
    tensors = {t.name: t for t in reader.tensors}
    llama = ck.model.config.model_type == "llama"

    def packed(name: str, reference: np.ndarray, heads: int | None = None):
        t = tensors.get(name)
        if t is None or t.tensor_type.name in ("F32", "F16", "BF16"):
            return reference  # stored unquantized: nothing to keep
        try:
            blocks = gguf_blocks.decode(np.asarray(t.data), t.tensor_type.name, int(t.shape[0]))
        except ValueError as e:
            raise SourceError(f"{ck.gguf_path.name}: {name}: {e}") from None
        if llama and heads:
            order = _unpermute_rows(blocks.shape[0], heads)
            blocks = replace(
                blocks, codes=blocks.codes[order], scales=blocks.scales[order], minimums=blocks.minimums[order]
            )
        p = gguf_blocks.to_packed(blocks)
        error = amax = 0.0
        for start in range(0, len(reference), CHECK_ROWS):  # float32 copies of a few rows at a time
            rows = slice(start, start + CHECK_ROWS)
            if not np.array_equal(blocks.dequantize(rows), reference[rows]):
                raise SourceError(
                    f"{ck.gguf_path.name}: {name}: its blocks do not decode to the weights transformers read"
                )
            error = max(error, float(np.abs(p.dequantize(offsets=True, rows=rows) - reference[rows]).max()))
            amax = max(amax, float(np.abs(reference[rows]).max()))
        if error > 1e-5 * max(amax, 1e-6):
            raise SourceError(f"{ck.gguf_path.name}: {name}: packed blocks are off by {error:.2e}")
        return p

    def layer(i: int, lw: dict) -> dict:
        lw = dict(lw)
        for key, gguf_name in _GGUF_NAMES.items():
            heads = {"q": cfg.num_heads, "k": cfg.num_kv_heads}.get(key)
            lw[key] = packed(f"blk.{i}.{gguf_name}.weight", lw[key], heads)
        return lw

    embed = packed("token_embd.weight", weights.embed)
    lm_head = packed("output.weight", weights.lm_head) if "output.weight" in tensors else embed
    layers = _PackedLayers(weights.layers, layer)
    return DecoderWeights(embed, lm_head, weights.final_norm, layers, weights.cos, weights.sin)


class _PackedLayers(Sequence):
    """Layer weights packed when a layer is asked for: the graph builder writes each layer's weights to disk before
    it asks for the next, so the packed blocks of all layers are never held at once (1.5 GB for the 1.5B Qwen)."""

    def __init__(self, layers: Sequence[dict], pack: Callable[[int, dict], dict]):
        self.layers, self.pack = layers, pack

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> dict:
        return self.pack(i, self.layers[i])
