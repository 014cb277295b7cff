"""User-facing errors: each carries one clear sentence; the CLI prints it without a traceback."""


class EdgemmError(Exception):
    """Base class of every error a user can cause (bad input, missing or damaged files)."""


class AudioError(EdgemmError):
    """The audio cannot be read or is unusable."""


class BundleError(EdgemmError):
    """A model bundle is missing, incomplete or does not match its manifest."""


class OptionsError(EdgemmError, ValueError):
    """An option has a value outside the accepted ones."""


class MemoryLimitError(EdgemmError, MemoryError):
    """A model does not fit in the memory the machine has free."""
