"""Whisper inference in onnxruntime: encoder (with cross-attention K/V) and a decoder step with KV cache.

This module runs the model; choosing tokens lives in :mod:`edgemm.runtime.speech.decoding`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgemm.runtime.bundle import Bundle
from edgemm.runtime.sessions import create_session


@dataclass
class KVCache:
    """Self-attention cache [layers, batch, heads, positions, head_dim] plus the window's cross K/V. One per decoded
    window: not shared between threads."""

    past_k: np.ndarray
    past_v: np.ndarray
    cross_k: np.ndarray
    cross_v: np.ndarray

    @property
    def length(self) -> int:
        return self.past_k.shape[3]

    def reorder(self, rows: np.ndarray) -> None:
        """Keep batch rows ``rows`` (beam search: each surviving beam's parent)."""
        self.past_k, self.past_v = self.past_k[:, rows], self.past_v[:, rows]


class WhisperONNX:
    """Encoder and decoder sessions. Safe to share between threads: the decoder state travels in a KVCache per
    window, and onnxruntime sessions allow concurrent runs."""

    def __init__(self, bundle: Bundle, threads: int | None = None):
        dims = bundle.manifest["model"]
        self.n_layers = dims["decoder_layers"]
        self.n_heads = dims["decoder_attention_heads"]
        self.head_dim = dims["d_model"] // self.n_heads
        self.n_text_ctx = dims["max_target_positions"]
        self.n_audio_ctx = dims["max_source_positions"]  # encoder positions of a full 30 s window
        self.encoder = create_session(bundle.file(bundle.manifest["graphs"]["encoder"]), threads)
        self.decoder = create_session(bundle.file(bundle.manifest["graphs"]["decoder"]), threads)

    def encode(self, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log-mel [n_mels, frames] -> cross K/V of one window (batch 1), frames / 2 positions: 3000 frames, or one of
        a length-adaptive bundle's ``encoder_lengths``."""
        cross_k, cross_v = self.encoder.run(["cross_k", "cross_v"], {"input_features": mel[None]})
        return cross_k, cross_v

    def new_cache(self, cross: tuple[np.ndarray, np.ndarray], batch: int = 1) -> KVCache:
        cross_k, cross_v = cross
        if batch > 1:
            cross_k, cross_v = np.repeat(cross_k, batch, axis=1), np.repeat(cross_v, batch, axis=1)
        empty = np.zeros((self.n_layers, batch, self.n_heads, 0, self.head_dim), np.float32)
        return KVCache(empty, empty, cross_k, cross_v)

    def step(self, tokens: np.ndarray, cache: KVCache) -> np.ndarray:
        """Feed ``tokens`` [batch, new]; extend the cache; return the last position's logits [batch, vocab]."""
        logits, cache.past_k, cache.past_v = self.decoder.run(
            ["logits", "present_k", "present_v"],
            {
                "input_ids": tokens.astype(np.int64),
                "past_k": cache.past_k,
                "past_v": cache.past_v,
                "cross_k": cache.cross_k,
                "cross_v": cache.cross_v,
            },
        )
        return logits[:, -1].astype(np.float32)
