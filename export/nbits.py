"""Block-wise weight quantization in the layout of onnxruntime's MatMulNBits operator.

A weight ``W`` of shape [N, K] (out, in) is cut into blocks of ``block`` values along K. Each block stores integer codes
``q`` and a float scale ``s`` (and for asymmetric schemes an integer zero point ``z``); it decodes as ``s * (q - z)``.

- 4-bit, asymmetric: z in 0..15 per block, fitted to the block's min/max. A llama.cpp Q4_1 block (``d * q + m``,
  also fitted to the min/max of 32 values) keeps its grid and codes exactly, but ``m`` can only move to the nearest
  multiple of ``d``: every value of the block shifts by up to d/2. That shift alone raised SmolLM2-135M's
  perplexity by 18%, so the mean error of each block is returned as ``offsets``; the graph adds it back as
  ``blocksum(x) @ offsets.T`` (exact for Q4_1 sources, and it removes the mean error of any source).
- 4-bit blocks may get a clip search (``clip=True``, the int4-mixed recipe): the block's range may be shrunk (to 80% in 9 steps) when that
  lowers its squared error after the offset correction; rounding the few extreme values harder buys a finer grid
  for the rest. The full range comes first and wins ties, so a Q4_1 block that contains 0 keeps its grid; one
  whose range had to be widened to 0 may be re-fitted. The offset columns themselves are not searched (nothing
  corrects their mean error).
- 8-bit, symmetric: z is the operator's default 128. A llama.cpp Q8_0 block (``d * q``, d = amax / 127) is
  reproduced exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

OFFSET_BLOCK = 32  # offsets are per 32 values along K, whatever the block size
ROWS = 4096  # rows quantized at a time (see quantize)
CLIP_RATIOS = np.linspace(1.0, 0.8, 9)  # shares of a 4-bit block's range tried by the clip search, full range first
CLIP_ROWS = 1024  # rows searched at a time (the search holds a few float64 copies of them)


@dataclass
class Packed:
    """MatMulNBits initializers for one weight."""

    codes: np.ndarray  # uint8 [N, blocks, block * bits / 8]
    scales: np.ndarray  # float32 [N * blocks]
    zero_points: np.ndarray | None  # uint8 [N * ceil(blocks * bits / 8)], or None for the default
    bits: int
    block: int
    n: int
    k: int
    offsets: np.ndarray | None = None  # float32 [N, K / OFFSET_BLOCK]: mean of (weight - decoded) per 32 values

    @property
    def blocks(self) -> int:
        return self.codes.shape[1]

    def zeros(self) -> np.ndarray:
        """The zero point of every block, uint8 [N, blocks] (the operator's default when there is no input)."""
        if self.zero_points is None:
            return np.full((self.n, self.blocks), 1 << (self.bits - 1), np.uint8)
        return unpack(self.zero_points.reshape(self.n, -1), self.bits)[:, : self.blocks]

    def dequantize(self, offsets: bool = False, rows: slice = slice(None)) -> np.ndarray:
        """Back to float [N, K] (for tests and error measurements); ``offsets``: with the offsets added back;
        ``rows``: only those rows."""
        q = unpack(self.codes[rows], self.bits).astype(np.float32)  # [rows, blocks, block]
        z = self.zeros()[rows, :, None].astype(np.float32)
        s = self.scales.reshape(self.n, self.blocks, 1)[rows]
        w = ((q - z) * s).reshape(len(q), -1)[:, : self.k]
        if offsets and self.offsets is not None:
            w = w + np.repeat(self.offsets[rows], OFFSET_BLOCK, axis=1)[:, : self.k]
        return w

    def with_zero_points(self) -> Packed:
        return (
            self if self.zero_points is not None else replace(self, zero_points=pack(self.zeros(), self.bits).ravel())
        )


def join_rows(parts: list[Packed]) -> Packed:
    """One weight from several of the same bits and block size stacked along N (q|k|v, gate|up)."""
    first = parts[0]
    if any((p.bits, p.block, p.k) != (first.bits, first.block, first.k) for p in parts):
        raise ValueError("rows to join must have the same bits, block size and length")
    if any(p.zero_points is not None for p in parts):
        parts = [p.with_zero_points() for p in parts]
    offsets = None
    if any(p.offsets is not None for p in parts):
        offsets = np.concatenate(
            [
                p.offsets if p.offsets is not None else np.zeros((p.n, -(-p.k // OFFSET_BLOCK)), np.float32)
                for p in parts
            ]
        )
    zero_points = np.concatenate([p.zero_points for p in parts]) if parts[0].zero_points is not None else None
    return Packed(
        np.concatenate([p.codes for p in parts]),
        np.concatenate([p.scales for p in parts]),
        zero_points,
        first.bits,
        first.block,
        sum(p.n for p in parts),
        first.k,
        offsets,
    )


def join_columns(left: Packed, right: Packed) -> Packed:
    """[left | right] along K (whole blocks of the same format; ``left.k`` a multiple of the block). Offsets are
    dropped: the result is what the operator computes."""
    if (left.bits, left.block, left.n) != (right.bits, right.block, right.n) or left.k % left.block:
        raise ValueError("columns to join must be whole blocks of the same format and rows")
    zero_points = None
    if left.zero_points is not None or right.zero_points is not None:
        zero_points = pack(np.concatenate([left.zeros(), right.zeros()], axis=1), left.bits).ravel()
    scales = np.concatenate([left.scales.reshape(left.n, -1), right.scales.reshape(right.n, -1)], axis=1).ravel()
    codes = np.concatenate([left.codes, right.codes], axis=1)
    return Packed(codes, scales, zero_points, left.bits, left.block, left.n, left.k + right.k)


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack integer codes along the last axis: 4-bit pairs go low nibble first."""
    q = q.astype(np.uint8)
    if bits == 8:
        return q
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros((*q.shape[:-1], 1), np.uint8)], axis=-1)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return packed
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def _blocks(w: np.ndarray, block: int) -> np.ndarray:
    n, k = w.shape
    pad = (-k) % block
    if pad:
        w = np.concatenate([w, np.zeros((n, pad), w.dtype)], axis=1)
    return w.reshape(n, -1, block).astype(np.float64)


def quantize(w: np.ndarray, bits: int, block: int = 32, clip: bool = False) -> Packed:
    """Quantize a float weight [N, K] to ``bits`` (4: asymmetric, 8: symmetric) in blocks of ``block``.

    Every block is quantized on its own, so rows go ROWS at a time: the float64 work arrays are a few times one
    chunk's size, not the whole weight's (a 1.5B model's embedding is 1 GB in float32)."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, not {bits}")
    if len(w) <= ROWS:
        return _quantize_rows(w, bits, block, clip)
    return join_rows([_quantize_rows(w[i : i + ROWS], bits, block, clip) for i in range(0, len(w), ROWS)])


def _quantize_rows(w: np.ndarray, bits: int, block: int, clip: bool) -> Packed:
    n, k = w.shape
    x = _blocks(w, block)
    if bits == 8:
        amax = np.abs(x).max(axis=-1, keepdims=True)
        s = np.where(amax > 0, amax / 127.0, 1.0)
        q = np.clip(np.rint(x / s), -127, 127) + 128
        return Packed(pack(q, 8), s.astype(np.float32).ravel(), None, 8, block, n, k)

    s, z, q = np.empty_like(x[..., :1]), np.empty_like(x[..., :1]), np.empty_like(x)
    for start in range(0, n, CLIP_ROWS):
        rows = slice(start, start + CLIP_ROWS)
        s[rows], z[rows], q[rows] = _clip_search(x[rows]) if clip else _asymmetric_4bit(x[rows], 1.0)
    offsets = (x - (q - z) * s).mean(axis=-1)
    zp = pack(z.reshape(n, -1), 4).ravel()
    return Packed(pack(q, 4), s.astype(np.float32).ravel(), zp, 4, block, n, k, offsets.astype(np.float32))


def _asymmetric_4bit(x: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale, zero point and codes of blocks [..., block] fitted to ``ratio`` of their min/max range."""
    # The range must contain 0 for the zero point to be a code (0..15); it does for almost every weight block.
    lo = np.minimum(x.min(axis=-1, keepdims=True) * ratio, 0)
    hi = np.maximum(x.max(axis=-1, keepdims=True) * ratio, 0)
    s = np.where(hi > lo, (hi - lo) / 15.0, np.maximum(np.abs(lo), 1e-8))
    z = np.clip(np.rint(-lo / s), 0, 15)
    q = np.clip(np.rint(x / s + z), 0, 15)
    return s, z, q


def _clip_search(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per block, the CLIP_RATIOS fit with the least squared error once the block's mean error is added back (the
    graph's offset correction); earlier ratios win ties."""
    best = None
    for ratio in CLIP_RATIOS:
        s, z, q = _asymmetric_4bit(x, ratio)
        r = x - (q - z) * s
        error = ((r - r.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1, keepdims=True)
        if best is None:
            best = [error, s, z, q]
            continue
        better = error < best[0]
        best = [np.where(better, new, old) for new, old in zip((error, s, z, q), best, strict=True)]
    return best[1], best[2], best[3]
