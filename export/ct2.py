"""Reader for CTranslate2 checkpoints (``model.bin``) and their mapping onto transformers' Whisper.

CTranslate2 stores a model as one binary file of named tensors (format version 6, written by
``ctranslate2.specs.ModelSpec._serialize``)::

    u32 version | str spec_name | u32 revision | u32 n_variables
    n_variables x (str name | u8 rank | u32 dims[rank] | u8 dtype | u32 n_bytes | bytes)
    u32 n_aliases | n_aliases x (str alias | str target)

where ``str`` is a u16 length (including a trailing NUL) followed by UTF-8 bytes. Some packages split
``model.bin`` into parts; :func:`read_model_bin` accepts the parts in order.
"""

from __future__ import annotations

import io
import re
import struct
from pathlib import Path

import numpy as np

from edgemm.export.errors import ExportError

# Order of CTranslate2's DataType enum (include/ctranslate2/types.h).
_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # None: bfloat16
_SUPPORTED_VERSIONS = (5, 6)


class CT2FormatError(ExportError):
    """The file is not a CTranslate2 model.bin this reader understands."""


class _Reader:
    def __init__(self, stream: io.BufferedIOBase):
        self.stream = stream

    def read(self, n: int) -> bytes:
        data = self.stream.read(n)
        if len(data) != n:
            raise CT2FormatError(f"model.bin is truncated (wanted {n} bytes at offset {self.stream.tell()})")
        return data

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        return self.read(self.unpack("H"))[:-1].decode("utf-8")


def read_model_bin(*parts: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """Return ``(spec_name, {name: array})`` with aliases resolved to the same array."""
    data = b"".join(Path(p).read_bytes() for p in parts)
    r = _Reader(io.BytesIO(data))
    version = r.unpack("I")
    if version not in _SUPPORTED_VERSIONS:
        raise CT2FormatError(
            f"unsupported CTranslate2 binary version {version} (expected one of {_SUPPORTED_VERSIONS})"
        )
    spec = r.string()
    r.unpack("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(r.unpack("I")):
        name = r.string()
        shape = [r.unpack("I") for _ in range(r.unpack("B"))]
        dtype_id = r.unpack("B")
        raw = r.read(r.unpack("I"))
        if dtype_id >= len(_DTYPES) or _DTYPES[dtype_id] is None:
            raise CT2FormatError(f"variable {name}: unsupported dtype id {dtype_id} (bfloat16 or unknown)")
        variables[name] = np.frombuffer(raw, dtype=_DTYPES[dtype_id]).reshape(shape)
    for _ in range(r.unpack("I")):
        alias, target = r.string(), r.string()
        variables[alias] = variables[target]
    return spec, variables


def _layer_count(variables: dict[str, np.ndarray], prefix: str) -> int:
    pattern = re.compile(rf"{prefix}/layer_(\d+)/")
    return len({m.group(1) for k in variables if (m := pattern.match(k))})


def whisper_dims(variables: dict[str, np.ndarray]) -> dict[str, int]:
    """Model dimensions of a CTranslate2 WhisperSpec, read from tensor shapes (never from a name)."""
    vocab, d_model = variables["decoder/embeddings/weight"].shape
    return {
        "vocab_size": int(vocab),
        "d_model": int(d_model),
        "num_mel_bins": int(variables["encoder/conv1/weight"].shape[1]),
        "encoder_layers": _layer_count(variables, "encoder"),
        "decoder_layers": _layer_count(variables, "decoder"),
        "encoder_attention_heads": int(variables["encoder/num_heads"]),
        "decoder_attention_heads": int(variables["decoder/num_heads"]),
        "encoder_ffn_dim": int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn_dim": int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": int(variables["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(variables["decoder/position_encodings/encodings"].shape[0]),
    }


def _attention(prefix: str, hf: str, v: dict, fused: str, out: str, kv_only: bool = False) -> dict:
    """Split a fused CTranslate2 projection into transformers' q/k/v (Whisper's k_proj has no bias)."""
    w, b = v[f"{prefix}/{fused}/weight"], v[f"{prefix}/{fused}/bias"]
    names = ("k", "v") if kv_only else ("q", "k", "v")
    d = w.shape[0] // len(names)
    sd = {}
    for i, n in enumerate(names):
        sd[f"{hf}.{n}_proj.weight"] = w[i * d : (i + 1) * d]
        if n != "k":
            sd[f"{hf}.{n}_proj.bias"] = b[i * d : (i + 1) * d]
    sd[f"{hf}.out_proj.weight"] = v[f"{prefix}/{out}/weight"]
    sd[f"{hf}.out_proj.bias"] = v[f"{prefix}/{out}/bias"]
    return sd


def _norm(ct2: str, hf: str, v: dict) -> dict:
    return {f"{hf}.weight": v[f"{ct2}/gamma"], f"{hf}.bias": v[f"{ct2}/beta"]}


def _ffn(ct2: str, hf: str, v: dict) -> dict:
    sd = _norm(f"{ct2}/layer_norm", f"{hf}.final_layer_norm", v)
    for i, fc in enumerate(("fc1", "fc2")):
        sd[f"{hf}.{fc}.weight"] = v[f"{ct2}/linear_{i}/weight"]
        sd[f"{hf}.{fc}.bias"] = v[f"{ct2}/linear_{i}/bias"]
    return sd


def whisper_state_dict(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map a CTranslate2 WhisperSpec onto ``WhisperForConditionalGeneration`` parameter names."""
    v, sd = variables, {}
    for side in ("encoder", "decoder"):
        sd[f"model.{side}.embed_positions.weight"] = v[f"{side}/position_encodings/encodings"]
        sd.update(_norm(f"{side}/layer_norm", f"model.{side}.layer_norm", v))
    for conv in ("conv1", "conv2"):
        sd[f"model.encoder.{conv}.weight"] = v[f"encoder/{conv}/weight"]
        sd[f"model.encoder.{conv}.bias"] = v[f"encoder/{conv}/bias"]
    sd["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    sd["proj_out.weight"] = v.get("decoder/projection/weight", v["decoder/embeddings/weight"])

    for i in range(_layer_count(v, "encoder")):
        ct2, hf = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        sd.update(_attention(f"{ct2}/self_attention", f"{hf}.self_attn", v, "linear_0", "linear_1"))
        sd.update(_norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm", v))
        sd.update(_ffn(f"{ct2}/ffn", hf, v))
    for i in range(_layer_count(v, "decoder")):
        ct2, hf = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        sd.update(_attention(f"{ct2}/self_attention", f"{hf}.self_attn", v, "linear_0", "linear_1"))
        sd.update(_norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm", v))
        cross = f"{ct2}/attention"
        sd[f"{hf}.encoder_attn.q_proj.weight"] = v[f"{cross}/linear_0/weight"]
        sd[f"{hf}.encoder_attn.q_proj.bias"] = v[f"{cross}/linear_0/bias"]
        sd.update(_attention(cross, f"{hf}.encoder_attn", v, "linear_1", "linear_2", kv_only=True))
        sd.update(_norm(f"{cross}/layer_norm", f"{hf}.encoder_attn_layer_norm", v))
        sd.update(_ffn(f"{ct2}/ffn", hf, v))
    return {k: np.array(a, dtype=np.float32) for k, a in sd.items()}  # writable copies
