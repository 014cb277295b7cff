"""Word error rate after Whisper's English text normalization (needs the ``bench`` or ``export`` extra)."""

from __future__ import annotations

from functools import lru_cache

from edgemm.runtime.errors import EdgemmError


@lru_cache(maxsize=1)
def _normalizer():
    try:
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError:
        raise EdgemmError("WER scoring needs whisper-normalizer: pip install 'edgemm[bench]'") from None
    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    return _normalizer()(text)


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER (total edits / total reference words) of normalized texts."""
    import jiwer

    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    return float(jiwer.wer(refs, hyps))
