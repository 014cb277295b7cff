"""The one error type of ``edgemm export``: the CLI prints it as one line (``edgemm: error: ...``, exit status 2)."""

from __future__ import annotations

from edgemm.runtime.errors import EdgemmError


class ExportError(EdgemmError):
    """A bundle cannot be built: an unreadable source, or graphs that do not reproduce the source model.

    Subclasses say which stage failed: SourceError (export/packaged.py), CT2FormatError (export/ct2.py),
    QuantizationError (export/quantize.py).
    """
