"""Distilling a smaller, faster Whisper student from a teacher (``edgemm distill``).

- ``data``: the offline training corpus (synthetic voices, real recordings that are not evaluation clips, non-speech),
  written as reproducible shards with a manifest; the teacher labels the audio, so no transcripts are needed.
"""
