"""Machine profiles: how one is chosen, what the pi profile changes (LLM, context window, photo models loaded per
question), and the one-line errors for an unknown one."""

import os

import numpy as np
import pytest
import skimage.data

from edgemm.models import presets
from edgemm.runtime import profiles
from edgemm.runtime.bundle import default_bundle, models_dir
from edgemm.runtime.errors import BundleError, OptionsError
from edgemm.runtime.profiles import PROFILE_ENV, PROFILES, active_profile, guess
from edgemm.runtime.vision.describe import OnDemandDescriber, SceneDescriber
from edgemm.runtime.vision.question import ImageQuestion
from tests.harness import edgemm

GiB = 1 << 30


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """Pretend to be a board: ``machine(memory_bytes, device_tree_model)``; $EDGEMM_PROFILE unset."""
    monkeypatch.delenv(PROFILE_ENV, raising=False)

    def pretend(memory: int | None, board: str | None = None):
        monkeypatch.setattr(profiles, "total_memory", lambda: memory)
        model = tmp_path / "model"
        model.unlink(missing_ok=True)
        if board is not None:
            model.write_bytes(board.encode() + b"\0")
        monkeypatch.setattr(profiles, "BOARD_MODEL", model)

    return pretend


def test_the_guess_follows_the_board_and_its_memory(machine):
    machine(24 * GiB)
    assert guess() == "desktop"
    machine(2 * GiB)
    assert guess() == "pi"  # any 2 GB machine
    machine(8 * GiB, "Raspberry Pi 5 Model B Rev 1.0")
    assert guess() == "pi"
    machine(None)  # memory unknown (not Linux)
    assert active_profile().name == "desktop"


def test_the_environment_wins_over_the_guess(machine, monkeypatch):
    machine(24 * GiB)
    monkeypatch.setenv(PROFILE_ENV, "pi")
    assert active_profile() is PROFILES["pi"]
    monkeypatch.setenv(PROFILE_ENV, "auto")
    assert active_profile() is PROFILES["desktop"]
    monkeypatch.setenv(PROFILE_ENV, "laptop")
    with pytest.raises(OptionsError, match="EDGEMM_PROFILE='laptop' is not a profile; choose one of auto, desktop, pi"):
        active_profile()


def test_the_pi_profile_picks_the_smallest_llm(monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, "desktop")
    assert default_bundle("llm") == models_dir() / presets()["llm"]["default"]
    monkeypatch.setenv(PROFILE_ENV, "pi")
    assert default_bundle("llm") == models_dir() / "smollm2-135m-instruct-int4"
    assert default_bundle("speech") == models_dir() / presets()["speech"]["default"]  # what it does not name


def _built(kind: str, name: str | None = None):
    path = models_dir() / (name or presets()[kind]["default"])
    if not (path / "manifest.json").exists():
        pytest.skip(f"{path} missing: run `make setup`")
    return path


def test_the_pi_profile_shortens_the_context_window_unless_one_is_given(monkeypatch):
    from edgemm.runtime.llm import LanguageModel

    path = _built("llm", "smollm2-135m-instruct-int4")
    monkeypatch.setenv(PROFILE_ENV, "pi")
    assert LanguageModel.load(path).context == PROFILES["pi"].context == 1024
    assert LanguageModel.load(path, context=4096).context == 4096
    monkeypatch.setenv(PROFILE_ENV, "desktop")
    assert LanguageModel.load(path).context == 2048


def test_the_pi_profile_keeps_one_copy_of_weights_and_a_bounded_history(monkeypatch):
    """Sessions without layout optimizations, llguidance without vocabulary slices, the assistant's chat with a
    history: the same grammar masks and the same answers, for less memory (docs/BENCHMARKS.md)."""
    import onnxruntime as ort

    from edgemm.runtime.llm import LanguageModel
    from edgemm.runtime.llm.constrain import Constraint, Grammar
    from edgemm.runtime.sessions import create_session

    path = _built("llm", "smollm2-135m-instruct-int4")
    levels, masks = {}, {}
    for name in ("desktop", "pi"):
        monkeypatch.setenv(PROFILE_ENV, name)
        levels[name] = create_session(path / "embed.onnx", threads=1).get_session_options().graph_optimization_level
        lm = LanguageModel.load(path, threads=1)
        assert lm.grammar_slices is PROFILES[name].grammar_slices
        constraint = Constraint(lm, Grammar.json_schema({"type": "object", "properties": {"a": {"type": "string"}}}))
        masks[name] = constraint.mask(np.zeros(lm.config.vocab_size, np.float32))
    assert levels == {"desktop": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                      "pi": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}  # fmt: skip
    assert np.array_equal(masks["desktop"], masks["pi"])
    assert PROFILES["pi"].history == 128 and PROFILES["desktop"].history is None


def test_photo_models_on_demand_describe_as_the_loaded_ones(monkeypatch):
    path = _built("vision")
    photo = skimage.data.chelsea()
    on_demand = OnDemandDescriber(path, ocr=False)
    loaded = SceneDescriber.load(path, ocr=False)
    assert on_demand.facts(photo).describe() == loaded.facts(photo).describe()
    assert [f.describe() for f in on_demand.facts_of([photo, photo])] == [loaded.facts(photo).describe()] * 2
    assert not any(isinstance(value, SceneDescriber) for value in vars(on_demand).values())  # nothing kept

    monkeypatch.setenv(PROFILE_ENV, "pi")
    lm = object()  # not used to load anything: the route is decided from the profile
    assert isinstance(ImageQuestion.load(vision_model=path, ocr=False, lm=lm).describer, OnDemandDescriber)
    monkeypatch.setenv(PROFILE_ENV, "desktop")
    assert isinstance(ImageQuestion.load(vision_model=path, ocr=False, lm=lm).describer, SceneDescriber)


def test_a_missing_vision_bundle_fails_at_start_up_not_at_the_first_photo(tmp_path):
    with pytest.raises(BundleError):
        OnDemandDescriber(tmp_path / "nothing-here")


def _edgemm(*args, env=None):
    return edgemm(*args, env={**os.environ, **(env or {})})


def test_the_cli_option_and_its_errors():
    out = _edgemm("--profile", "pi", "models")
    assert out.returncode == 0, out.stderr
    assert "* smollm2-135m-instruct-int4" in out.stdout
    out = _edgemm("models", "--profile", "desktop")
    assert f"* {presets()['llm']['default']}" in out.stdout
    out = _edgemm("--profile", "laptop", "models")
    assert out.returncode == 2 and "invalid choice: 'laptop'" in out.stderr and "Traceback" not in out.stderr
    out = _edgemm("ask", "Hi", env={PROFILE_ENV: "laptop"})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "edgemm: error: EDGEMM_PROFILE='laptop' is not a profile; choose one of auto, desktop, pi"
    ]
