"""Keep the libraries' chatter out of an export's output, so that ``edgemm export`` prints its step lines only.

Silenced: torch's TracerWarnings and other Python warnings, transformers' notices (deprecations, generation
defaults, tokenizer behaviour), onnxruntime's graph-optimizer warnings ("Removing initializer ...") and the
quantization tool's advice (logged on the root logger), huggingface_hub's retries; around the calls that print
(calibration, progress bars drawn by a library), what they print. Errors always get through. With ``edgemm -v`` (the
"edgemm" logger at DEBUG) nothing is silenced.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import warnings
from contextlib import contextmanager, nullcontext, redirect_stderr, redirect_stdout

ORT_WARNING, ORT_ERROR = 2, 3  # onnxruntime log severities; WARNING is its default


def verbose() -> bool:
    return logging.getLogger("edgemm").isEnabledFor(logging.DEBUG)


class _OwnLinesOnly(logging.Filter):
    """Lets edgemm's own records through, and other libraries' errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("edgemm") or record.levelno >= logging.ERROR


@contextmanager
def quiet_libraries():
    """Silence the libraries for the duration of the block, unless ``verbose()``."""
    if verbose():
        yield
        return
    import onnxruntime as ort

    handlers = [*logging.getLogger().handlers, logging.lastResort]
    only_ours = _OwnLinesOnly()
    for handler in handlers:
        if handler is not None:
            handler.addFilter(only_ours)
    ort.set_default_logger_severity(ORT_ERROR)  # sessions created without their own severity (the tools', ours)
    # huggingface_hub prints through a handler of its own (offline: "Retrying in 1s [Retry 1/5]" and the error).
    hub = logging.getLogger("huggingface_hub")
    hub_level = hub.level
    hub.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), _transformers_errors_only():
            warnings.simplefilter("ignore")
            yield
    finally:
        hub.setLevel(hub_level)
        ort.set_default_logger_severity(ORT_WARNING)
        for handler in handlers:
            if handler is not None:
                handler.removeFilter(only_ours)


@contextmanager
def _transformers_errors_only():
    """transformers logs through a handler of its own: set its level with its setter when it is imported, and
    through the variable it reads when it is imported later (a step imports it)."""
    before = os.environ.get("TRANSFORMERS_VERBOSITY")
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    hf_logging = sys.modules.get("transformers.utils.logging")
    level = hf_logging.get_verbosity() if hf_logging else logging.WARNING
    if hf_logging:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TRANSFORMERS_VERBOSITY"]
        else:
            os.environ["TRANSFORMERS_VERBOSITY"] = before
        hf_logging = sys.modules.get("transformers.utils.logging")
        if hf_logging:
            hf_logging.set_verbosity(level)


def library_progress_bar_hidden():
    """Around a library call that draws a progress bar of its own (transformers' GGUF conversion), unless -v."""
    return nullcontext() if verbose() else redirect_stderr(io.StringIO())


def library_prints_hidden():
    """Around a library call that prints to stdout (onnxruntime's calibration: "Collecting tensor data and making
    histogram ...", "Number of tensors : 104"), unless -v."""
    return nullcontext() if verbose() else redirect_stdout(io.StringIO())
