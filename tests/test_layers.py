"""The layers point one way: runtime (torch-free) <- device <- export <- bench. The command line too: each area
registers its own commands (export/commands.py, bench/commands.py, as entry points the runtime's CLI assembles).

Every import in the installed areas is read from the source (at module level or inside a function, and
``importlib.import_module`` of a constant or f-string name): an area imports only its own layer and those below.
Nothing installed loads a file by its path (``tools/`` is outside the package)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"runtime": 0, "models": 0, "device": 1, "export": 2, "bench": 3}
PATH_LOADERS = {"spec_from_file_location", "run_path", "SourceFileLoader"}


def _imported(node: ast.AST) -> list[str]:
    """The edgemm modules ``node`` imports (empty when it imports none)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module]
    if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
        name = node.args[0] if node.args else None
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            return [name.value]
        if isinstance(name, ast.JoinedStr) and name.values and isinstance(name.values[0], ast.Constant):
            return [str(name.values[0].value)]
    return []


def wrong_way(root: Path) -> list[str]:
    """``file:line area -> module`` for each import of a higher layer, and each load of a file by its path."""
    found = []
    for area, layer in LAYERS.items():
        for path in sorted((root / area).rglob("*.py")):
            where = path.relative_to(root).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), where)):
                func = getattr(node, "func", None)
                if isinstance(node, ast.Call) and getattr(func, "attr", getattr(func, "id", "")) in PATH_LOADERS:
                    found.append(f"{where}:{node.lineno} loads a file by its path")
                for module in _imported(node):
                    parts = module.split(".")
                    target = LAYERS.get(parts[1]) if parts[0] == "edgemm" and len(parts) > 1 else None
                    if target is not None and target > layer:
                        found.append(f"{where}:{node.lineno} {area} -> {module}")
    return found


def test_layers_point_one_way():
    assert wrong_way(ROOT) == []


def test_a_wrong_way_import_is_found(tmp_path):
    """The check itself: imports at module level, inside a function and through importlib, and a path load."""
    for area in LAYERS:
        (tmp_path / area).mkdir()
    (tmp_path / "runtime" / "good.py").write_text("from edgemm.runtime.errors import EdgemmError\n")
    (tmp_path / "export" / "fine.py").write_text("import edgemm.device.audio\nfrom edgemm.runtime import tts\n")
    (tmp_path / "export" / "speech.py").write_text(
        "def check():\n    from edgemm.bench.asr import wer\n    return wer\n"
    )
    (tmp_path / "runtime" / "hub.py").write_text(
        "import importlib\n\n\ndef load(name):\n    return importlib.import_module(f'edgemm.export.{name}')\n"
    )
    (tmp_path / "device" / "audio.py").write_text(
        "import importlib.util\n\nspec = importlib.util.spec_from_file_location('x', 'tools/x.py')\n"
    )
    assert wrong_way(tmp_path) == [
        "runtime/hub.py:5 runtime -> edgemm.export.",
        "device/audio.py:3 loads a file by its path",
        "export/speech.py:2 export -> edgemm.bench.asr",
    ]
