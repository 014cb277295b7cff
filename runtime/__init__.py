"""edgemm runtime: torch-free inference on a CPU (onnxruntime, numpy, tokenizers)."""

from edgemm.runtime.errors import EdgemmError

__all__ = ["EdgemmError"]
