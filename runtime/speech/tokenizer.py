"""Whisper's tokenizer: text <-> ids with the ``tokenizers`` library, special ids from the manifest.

Text is encoded as plain text: ``<|endoftext|>`` typed into a prompt is the characters ``<``, ``|``, ``end``...,
never the control token. Every added token of a Whisper tokenizer is a control or timestamp token (``<|...|>``), so
encoding uses a copy of the tokenizer without them: its byte-level BPE cannot join text into those ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

from tokenizers import Tokenizer


@dataclass(frozen=True)
class SpecialTokens:
    eot: int
    sot: int
    translate: int
    transcribe: int
    sot_prev: int
    no_speech: int
    no_timestamps: int
    timestamp_begin: int
    languages: dict  # language code -> token id (empty for English-only models)

    @classmethod
    def from_manifest(cls, tokens: dict) -> SpecialTokens:
        return cls(**{k: tokens[k] for k in cls.__dataclass_fields__})


class WhisperTokenizer:
    def __init__(self, tokenizer: Tokenizer, special: SpecialTokens):
        self._tok = tokenizer
        self.special = special

    @cached_property
    def _plain(self) -> Tokenizer:
        spec = json.loads(self._tok.to_str())
        spec["added_tokens"] = []
        return Tokenizer.from_str(json.dumps(spec))

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` as plain text (no control tokens, whatever it says)."""
        return self._plain.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        """Text of the ordinary tokens in ``ids`` (special and timestamp tokens are dropped)."""
        return self._tok.decode([int(i) for i in ids if i < self.special.eot])

    def sot_sequence(self, language: str | None, task: str, timestamps: bool) -> list[int]:
        s = self.special
        seq = [s.sot]
        if s.languages:
            seq += [s.languages[language or "en"], s.translate if task == "translate" else s.transcribe]
        if not timestamps:
            seq.append(s.no_timestamps)
        return seq
