"""Whisper -> two ONNX graphs with fixed input/output names.

``encoder.onnx``: ``input_features`` [B, n_mels, 3000] -> ``cross_k``, ``cross_v``
    [L, B, H, 1500, head_dim]: the cross-attention keys/values of every decoder layer, computed once per
    30 s window instead of once per token. Its self-attention is onnxruntime's fused ``MultiHeadAttention``
    (domain ``com.microsoft``), whose CPU kernel works block by block (flash attention) and never holds the
    [H, 1500, 1500] scores of a 30 s window (54 MB per layer for tiny's 6 heads). With ``dynamic_frames`` the frames axis is free (any even length up to
    3000 -> frames / 2 positions): for students distilled to encode the audio's own length; Whisper itself was
    trained on 30 s windows only, so a plain checkpoint is exported (and run) at 3000 frames.
``decoder.onnx``: ``input_ids`` [B, T], ``past_k``/``past_v`` [L, B, H, P, head_dim] (P may be 0),
    ``cross_k``/``cross_v`` -> ``logits`` [B, T, V], ``present_k``/``present_v`` [L, B, H, P+T, head_dim].

The token embedding and the output projection are one tied matrix stored once, transposed ([D, V]) so
that the projection is a plain MatMul (quantizable) and the embedding a Gather along axis 1.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import WhisperForConditionalGeneration

OPSET = 17
ENCODER_INPUTS, ENCODER_OUTPUTS = ["input_features"], ["cross_k", "cross_v"]
DECODER_INPUTS = ["input_ids", "past_k", "past_v", "cross_k", "cross_v"]
DECODER_OUTPUTS = ["logits", "present_k", "present_v"]


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, T, D] -> [B, H, T, D/H]"""
    b, t, d = x.shape
    return x.view(b, t, n_heads, d // n_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, hd] -> [B, T, H*hd]"""
    b, h, t, hd = x.shape
    return x.transpose(1, 2).reshape(b, t, h * hd)


class FusedSelfAttention(torch.autograd.Function):
    """Multi-head attention over already projected ``q``, ``k``, ``v`` [B, T, D] -> [B, T, D], scaled by
    1 / sqrt(head_dim) as Whisper scales it. PyTorch computes it plainly; the ONNX export writes one
    ``com.microsoft.MultiHeadAttention`` node (inference only: there is no backward)."""

    @staticmethod
    def forward(ctx, q, k, v, n_heads: int):
        q, k, v = (_heads(x, n_heads) for x in (q, k, v))
        scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        return _merge(torch.matmul(torch.softmax(scores, dim=-1), v))

    @staticmethod
    def symbolic(g, q, k, v, n_heads: int):
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=n_heads)
        out.setType(q.type())
        return out


def fused_encoder_layer(layer, x: torch.Tensor) -> torch.Tensor:
    """transformers' ``WhisperEncoderLayer`` at inference, its self-attention as :class:`FusedSelfAttention`."""
    attn = layer.self_attn
    h = layer.self_attn_layer_norm(x)
    x = x + attn.out_proj(FusedSelfAttention.apply(attn.q_proj(h), attn.k_proj(h), attn.v_proj(h), attn.num_heads))
    return x + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))


def encode_frames(encoder, input_features: torch.Tensor, fused: bool = False) -> torch.Tensor:
    """Whisper's encoder on log-mel ``input_features`` [B, n_mels, T] of any even length T up to 2 x its positions
    (3000 frames, 30 s): the positional embeddings are sliced to the T / 2 positions the convolutions give.
    transformers' own forward accepts only the full 30 s window; at T = 3000 this computes exactly what it does.
    ``fused``: the layers as :func:`fused_encoder_layer` (for export; it cannot be trained).
    Returns the hidden states [B, T / 2, d_model]."""
    x = nn.functional.gelu(encoder.conv1(input_features))
    x = nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    x = nn.functional.dropout(x, p=encoder.dropout, training=encoder.training)
    for layer in encoder.layers:
        x = fused_encoder_layer(layer, x) if fused else layer(x, None, layer_head_mask=None)[0]
    return encoder.layer_norm(x)


class EncoderWithCrossKV(nn.Module):
    def __init__(self, model: WhisperForConditionalGeneration):
        super().__init__()
        self.encoder = model.model.encoder
        self.layers = model.model.decoder.layers
        self.n_heads = model.config.decoder_attention_heads

    def forward(self, input_features: torch.Tensor):
        hidden = encode_frames(self.encoder, input_features, fused=True)
        ks = [_heads(layer.encoder_attn.k_proj(hidden), self.n_heads) for layer in self.layers]
        vs = [_heads(layer.encoder_attn.v_proj(hidden), self.n_heads) for layer in self.layers]
        return torch.stack(ks), torch.stack(vs)


class DecoderStep(nn.Module):
    """One decoder call over T new tokens with an explicit, stacked self-attention cache."""

    def __init__(self, model: WhisperForConditionalGeneration):
        super().__init__()
        decoder = model.model.decoder
        self.layers = decoder.layers
        self.positions = decoder.embed_positions.weight
        self.final_norm = decoder.layer_norm
        self.n_heads = model.config.decoder_attention_heads
        self.scale = (model.config.d_model // self.n_heads) ** -0.5
        # One [D, V] copy shared by the embedding (Gather axis 1) and the output projection (MatMul).
        self.embed_t = nn.Parameter(decoder.embed_tokens.weight.detach().t().contiguous())

    def _attend(self, q, k, v, mask=None):
        scores = torch.matmul(q * self.scale, k.transpose(-1, -2))
        if mask is not None:
            scores = scores + mask
        return torch.matmul(torch.softmax(scores, dim=-1), v)

    def forward(self, input_ids, past_k, past_v, cross_k, cross_v):
        b, t = input_ids.shape
        p = past_k.shape[3]
        embeds = torch.index_select(self.embed_t, 1, input_ids.reshape(-1)).t().reshape(b, t, -1)
        x = embeds + self.positions[p : p + t]
        # Causal mask over [past + new]: new token i sees positions <= p + i.
        key_pos = torch.arange(p + t, device=x.device)
        query_pos = torch.arange(t, device=x.device) + p
        mask = torch.where(key_pos[None, :] > query_pos[:, None], float("-inf"), 0.0)

        present_k, present_v = [], []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            q = _heads(attn.q_proj(h), self.n_heads)
            k = torch.cat([past_k[i], _heads(attn.k_proj(h), self.n_heads)], dim=2)
            v = torch.cat([past_v[i], _heads(attn.v_proj(h), self.n_heads)], dim=2)
            present_k.append(k)
            present_v.append(v)
            x = x + attn.out_proj(_merge(self._attend(q, k, v, mask)))

            cross = layer.encoder_attn
            q = _heads(cross.q_proj(layer.encoder_attn_layer_norm(x)), self.n_heads)
            x = x + cross.out_proj(_merge(self._attend(q, cross_k[i], cross_v[i])))

            h = layer.final_layer_norm(x)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
        logits = torch.matmul(self.final_norm(x), self.embed_t)
        return logits, torch.stack(present_k), torch.stack(present_v)


def example_inputs(model: WhisperForConditionalGeneration, batch: int = 2, new: int = 3, past: int = 2):
    c = model.config
    hd = c.d_model // c.decoder_attention_heads
    cache = (c.decoder_layers, batch, c.decoder_attention_heads, past, hd)
    cross = (c.decoder_layers, batch, c.decoder_attention_heads, c.max_source_positions, hd)
    features = torch.randn(batch, c.num_mel_bins, 2 * c.max_source_positions)
    ids = torch.randint(0, c.vocab_size, (batch, new))
    return features, (ids, torch.randn(cache), torch.randn(cache), torch.randn(cross), torch.randn(cross))


def export_whisper(
    model: WhisperForConditionalGeneration, out_dir: Path, dynamic_frames: bool = False
) -> dict[str, Path]:
    """Write ``encoder.onnx`` and ``decoder.onnx`` (fp32) into ``out_dir``; ``dynamic_frames``: the encoder takes
    any even number of mel frames up to 3000 (its cross K/V then have frames / 2 positions)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    features, dec_args = example_inputs(model)
    paths = {"encoder": out_dir / "encoder.onnx", "decoder": out_dir / "decoder.onnx"}
    kv_axes = {1: "batch", 3: "past"}
    frames, positions = ({2: "frames"}, {3: "positions"}) if dynamic_frames else ({}, {})
    cross_axes = {1: "batch", **positions}
    with torch.no_grad():
        torch.onnx.export(
            EncoderWithCrossKV(model).eval(),
            (features,),
            str(paths["encoder"]),
            input_names=ENCODER_INPUTS,
            output_names=ENCODER_OUTPUTS,
            dynamic_axes={"input_features": {0: "batch", **frames}, "cross_k": cross_axes, "cross_v": cross_axes},
            opset_version=OPSET,
            custom_opsets={"com.microsoft": 1},
            dynamo=False,
        )
        torch.onnx.export(
            DecoderStep(model).eval(),
            dec_args,
            str(paths["decoder"]),
            input_names=DECODER_INPUTS,
            output_names=DECODER_OUTPUTS,
            dynamic_axes={
                "input_ids": {0: "batch", 1: "new"},
                "past_k": kv_axes,
                "past_v": kv_axes,
                "cross_k": cross_axes,
                "cross_v": cross_axes,
                "logits": {0: "batch", 1: "new"},
                "present_k": {1: "batch", 3: "total"},
                "present_v": {1: "batch", 3: "total"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    return paths
