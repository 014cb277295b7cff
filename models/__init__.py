"""Model presets (which source, which quantization, for which target). Weights are never kept here:
bundles are built into ``$EDGEMM_MODELS`` by ``edgemm export``."""

import json
from importlib import resources


def presets() -> dict:
    return json.loads(resources.files(__name__).joinpath("presets.json").read_text())
