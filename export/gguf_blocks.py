"""llama.cpp's quantized tensor blocks, decoded into integer codes and per-sub-block scales and minimums.

Every supported type decodes as ``value = scale * code - minimum`` over sub-blocks of 16 or 32 values along a row,
with unsigned codes:

| type | sub-block | code | scale | minimum |
|---|---|---|---|---|
| Q4_0 | 32 | 0..15 | d | 8 d |
| Q4_1 | 32 | 0..15 | d | -m |
| Q5_0 | 32 | 0..31 | d | 16 d |
| Q5_1 | 32 | 0..31 | d | -m |
| Q8_0 | 32 | 0..255 (int8 + 128) | d | 128 d |
| Q4_K | 32 (8 per super-block of 256) | 0..15 | d * sc (6-bit) | dmin * m (6-bit) |
| Q5_K | 32 (8 per super-block of 256) | 0..31 | d * sc (6-bit) | dmin * m (6-bit) |
| Q6_K | 16 (16 per super-block of 256) | 0..63 | d * sc (int8) | 32 d * sc |

The products are exact in float32 (fp16 times a small integer), so ``scale * code - minimum`` reproduces the values
of ``gguf.quants.dequantize`` bit for bit. ``to_packed`` turns the blocks into MatMulNBits initializers without a
second rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgemm.export import nbits

QK_K = 256  # values per K-quant super-block


@dataclass
class Blocks:
    """One quantized tensor [N, K] (rows are output features)."""

    codes: np.ndarray  # uint8 [N, K]
    scales: np.ndarray  # float32 [N, K // block]
    minimums: np.ndarray  # float32 [N, K // block]
    block: int  # values per sub-block: 16 or 32
    code_bits: int  # bits the codes use: 4, 5, 6 or 8
    zero: int | None  # minimum == zero * scale exactly (symmetric types), else None
    source: str  # the GGUF type name

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape

    def dequantize(self, rows: slice = slice(None)) -> np.ndarray:
        """The values [N, K], or only the rows ``rows``."""
        codes = self.codes[rows]
        n, k = codes.shape
        codes = codes.reshape(n, -1, self.block).astype(np.float32)
        return (self.scales[rows, :, None] * codes - self.minimums[rows, :, None]).reshape(n, k)


def _f16(raw: np.ndarray) -> np.ndarray:
    """Little-endian fp16 bytes [..., 2] -> float32 [...]."""
    return np.ascontiguousarray(raw).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[..., 16] bytes -> [..., 32] values: the low nibbles are values 0..15, the high ones 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits_of(qh: np.ndarray, count: int) -> np.ndarray:
    """Little-endian bit array: [..., count / 8] bytes -> [..., count] values of 0/1."""
    return np.unpackbits(qh, axis=-1, bitorder="little")[..., :count]


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and 8 six-bit minimums of a Q4_K / Q5_K super-block, from its 12 bytes."""
    a, b, c = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    # Sub-blocks 0-3: the low 6 bits of bytes 0-3 (scales) and 4-7 (minimums). Sub-blocks 4-7: the nibbles of
    # bytes 8-11, with the top two bits of bytes 0-3 (scales) and 4-7 (minimums) above them.
    scales = np.concatenate([a & 0x3F, (c & 0x0F) | ((a >> 6) << 4)], axis=-1)
    minimums = np.concatenate([b & 0x3F, (c >> 4) | ((b >> 6) << 4)], axis=-1)
    return scales.astype(np.float32), minimums.astype(np.float32)


def _legacy(raw: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 blocks [..., bytes] -> codes [..., 32], scale [...], minimum [...]."""
    d = _f16(raw[..., 0:2])
    if kind == "Q8_0":
        codes = (raw[..., 2:34].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return codes, d, 128 * d
    offset = 4 if kind in ("Q4_1", "Q5_1") else 2
    m = _f16(raw[..., 2:4]) if offset == 4 else None
    if kind.startswith("Q5"):
        high = _bits_of(raw[..., offset : offset + 4], 32)
        codes = _nibbles(raw[..., offset + 4 : offset + 20]) | (high << 4)
    else:
        codes = _nibbles(raw[..., offset : offset + 16])
    if m is not None:
        return codes, d, -m
    return codes, d, (16 if kind == "Q5_0" else 8) * d


def _q4k_q5k(raw: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Super-blocks [..., bytes] -> codes [..., 256], scales [..., 8], minimums [..., 8]."""
    d, dmin = _f16(raw[..., 0:2]), _f16(raw[..., 2:4])
    sc, m = _k_scales(raw[..., 4:16])
    if kind == "Q5_K":
        qh, qs = raw[..., 16:48], raw[..., 48:176]
    else:
        qh, qs = None, raw[..., 16:144]
    # qs holds 4 chunks of 32 bytes; chunk j gives sub-block 2j (low nibbles) and 2j + 1 (high nibbles).
    qs = qs.reshape(*qs.shape[:-1], 4, 32)
    codes = np.stack([qs & 0x0F, qs >> 4], axis=-2).reshape(*qs.shape[:-2], QK_K)
    if qh is not None:
        # Bit i of qh[l] is the fifth bit of value l of sub-block i.
        high = np.unpackbits(qh[..., None], axis=-1, bitorder="little")  # [..., 32, 8]
        codes = codes | (np.swapaxes(high, -1, -2).reshape(*qh.shape[:-1], QK_K) << 4)
    return codes, d[..., None] * sc, dmin[..., None] * m


def _q6k(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Super-blocks [..., 210 bytes] -> codes [..., 256], scales [..., 16], minimums [..., 16]."""
    ql, qh = raw[..., 0:128], raw[..., 128:192]
    sc = raw[..., 192:208].view(np.int8).astype(np.float32)
    d = _f16(raw[..., 208:210])
    # Two halves of 128 values; in each, ql gives 64 bytes (low nibbles: values 0-63, high: 64-127) and qh 32 bytes
    # whose bit pairs 0-1, 2-3, 4-5, 6-7 are the top two bits of values 0-31, 32-63, 64-95, 96-127.
    ql = ql.reshape(*ql.shape[:-1], 2, 64)
    qh = qh.reshape(*qh.shape[:-1], 2, 1, 32)
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=-1)  # [..., 2, 128]
    top = (qh >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 0x03  # [..., 2, 4, 32]
    codes = (low | (top.reshape(*top.shape[:-2], 128) << 4)).reshape(*raw.shape[:-1], QK_K)
    scales = d[..., None] * sc
    return codes, scales, 32 * scales


SUPPORTED = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
_LAYOUT = {  # type: (values per block in the file, bytes per block, sub-block, code bits, symmetric zero)
    "Q4_0": (32, 18, 32, 4, 8),
    "Q4_1": (32, 20, 32, 4, None),
    "Q5_0": (32, 22, 32, 5, 16),
    "Q5_1": (32, 24, 32, 5, None),
    "Q8_0": (32, 34, 32, 8, 128),
    "Q4_K": (QK_K, 144, 32, 4, None),
    "Q5_K": (QK_K, 176, 32, 5, None),
    "Q6_K": (QK_K, 210, 16, 6, 32),
}


def decode(raw: np.ndarray, kind: str, k: int) -> Blocks:
    """``raw``: uint8 [N, bytes per row] of a GGUF tensor of type ``kind`` whose rows hold ``k`` values."""
    if kind not in _LAYOUT:
        raise ValueError(f"GGUF tensor type {kind} has no exact import (supported: {', '.join(SUPPORTED)})")
    per_block, size, sub, code_bits, zero = _LAYOUT[kind]
    n = raw.shape[0]
    if k % per_block or raw.shape[1] != k // per_block * size:
        raise ValueError(f"{kind} rows of {k} values must be {k // per_block * size} bytes, not {raw.shape[1]}")
    blocks = raw.reshape(n, k // per_block, size)
    if kind == "Q6_K":
        codes, scales, minimums = _q6k(blocks)
    elif kind in ("Q4_K", "Q5_K"):
        codes, scales, minimums = _q4k_q5k(blocks, kind)
    else:
        codes, scales, minimums = _legacy(blocks, kind)
    return Blocks(
        codes.reshape(n, k).astype(np.uint8),
        scales.reshape(n, -1).astype(np.float32),
        minimums.reshape(n, -1).astype(np.float32),
        sub,
        code_bits,
        zero,
        kind,
    )


def to_packed(b: Blocks) -> nbits.Packed:
    """MatMulNBits initializers holding exactly the same values: 4-bit codes stay 4-bit, 5/6/8-bit ones become 8-bit.

    Symmetric types shift their codes onto the operator's default zero point (no zero-point input). The others get
    the nearest integer zero point per sub-block and, in ``offsets``, the constant left over (``scale * zero -
    minimum``, the same for every value of the sub-block), which the graph adds back (see ``nbits``)."""
    n, k = b.shape
    bits = 4 if b.code_bits == 4 else 8
    default = 1 << (bits - 1)
    codes = b.codes.reshape(n, -1, b.block)
    if b.zero is not None:
        shifted = codes.astype(np.int16) + (default - b.zero)
        return nbits.Packed(nbits.pack(shifted, bits), b.scales.ravel(), None, bits, b.block, n, k)
    scales = b.scales.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ideal = np.where(scales != 0, b.minimums / scales, 0.0)
    zero = np.clip(np.rint(ideal), 0, (1 << bits) - 1)
    leftover = scales * zero - b.minimums  # value - decoded, per sub-block
    if b.block != nbits.OFFSET_BLOCK:
        raise ValueError(f"{b.source}: offsets need sub-blocks of {nbits.OFFSET_BLOCK}")
    zero_points = nbits.pack(zero.astype(np.uint8), bits).ravel()
    return nbits.Packed(
        nbits.pack(codes, bits), b.scales.ravel(), zero_points, bits, b.block, n, k, leftover.astype(np.float32)
    )
