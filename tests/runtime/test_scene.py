"""Scene facts on real photos: the NanoDet detector (converted from TF.js), counts, places and colours, and the
answers the offline path gives from them."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from edgemm.export.errors import ExportError
from edgemm.runtime.bundle import default_bundle, models_dir
from edgemm.runtime.vision.classify import Label
from edgemm.runtime.vision.colours import colour_names
from edgemm.runtime.vision.describe import SceneDescriber, reconcile
from edgemm.runtime.vision.detect import Detection, non_max_suppression

skdata = pytest.importorskip("skimage.data")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def describer():
    path = default_bundle("vision")
    if not (path / "manifest.json").exists():
        pytest.skip(f"default vision bundle missing at {path}: run `make setup`")
    describer = SceneDescriber.load(path, ocr=False)
    assert describer.detector is not None, "the default vision bundle has no detector: rebuild it"
    return describer


def side_by_side(*photos) -> Image.Image:
    """A collage of real photos in a row, scaled to one height."""
    images = [Image.fromarray(p).convert("RGB") for p in photos]
    height = min(i.height for i in images)
    images = [i.resize((round(i.width * height / i.height), height)) for i in images]
    canvas = Image.new("RGB", (sum(i.width for i in images), height))
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width
    return canvas


def labels(facts) -> list[str]:
    return [o.detection.label for o in facts.objects]


def test_detector_matches_tfjs(describer):
    fidelity = describer.classifier.bundle.manifest["fidelity"]["detector_vs_tfjs"]
    assert "not_checked" not in fidelity, fidelity  # node + npm are installed by make setup
    assert fidelity["max_output_diff"] < 1e-4


def test_one_of_each_on_real_photos(describer):
    cat = describer.facts(skdata.chelsea())
    assert labels(cat) == ["cat"], cat.to_dict()  # not a person, not a dog
    astronaut = describer.facts(skdata.astronaut())
    assert labels(astronaut) == ["person"] and astronaut.objects[0].position == "on the left"
    bike = describer.facts(skdata.stereo_motorcycle()[0])
    assert labels(bike) == ["motorcycle"] and "red" in bike.objects[0].colours
    assert "orange" in astronaut.objects[0].colours  # her suit


def test_classifier_settles_what_the_detector_is_unsure_of(describer):
    # A square close-up of the cat: NanoDet alone scores the whole box "person" 0.49, "cat" 0.43.
    square = Image.fromarray(skdata.chelsea()).crop((75, 0, 375, 300))
    assert labels(describer.facts(square)) == ["cat"]
    # The espresso cup, which NanoDet alone sees at only 0.34: the classifier is sure of it.
    assert labels(describer.facts(skdata.coffee())) == ["cup"]


def test_reconcile_rules():
    whole = (0.0, 0.0, 1.0, 1.0)
    person, cat = Detection("person", 0.49, whole), Detection("cat", 0.43, whole)
    tabby, mug = Label("tabby, tabby cat", 0.9, 281), Label("coffee mug", 0.9, 504)
    assert reconcile([person, cat], tabby, 0.45) == [cat]  # the classifier's class wins the box
    assert reconcile([person, cat], mug, 0.45) == []  # rivals within the margin, no corroboration: unsure
    clear = Detection("person", 0.7, whole)
    assert reconcile([clear, cat], mug, 0.45) == [clear]  # a clear lead stands
    second = Detection("cat", 0.35, (0.0, 0.0, 0.2, 0.2))
    assert reconcile([cat, second], tabby, 0.45) == [cat]  # only the classifier's main subject gets the lower bar


def test_nothing_invented_where_nothing_is(describer):
    for photo in (skdata.coffee(), skdata.rocket(), np.stack([skdata.page()] * 3, axis=-1)):
        facts = describer.facts(photo)
        assert not {"person", "cat", "dog"} & set(labels(facts)), facts.to_dict()


def test_counts_in_a_collage(describer):
    facts = describer.facts(side_by_side(skdata.chelsea(), skdata.chelsea()))
    assert labels(facts) == ["cat", "cat"]
    assert "two cats: a brown one on the left, a brown one on the right" in facts.describe()
    people = describer.facts(side_by_side(skdata.astronaut(), np.stack([skdata.camera()] * 3, axis=-1)))
    assert labels(people) == ["person", "person"] and "two people" in people.describe()


@pytest.mark.parametrize(
    "rgb, name",
    [((220, 30, 30), "red"), ((30, 60, 200), "blue"), ((40, 160, 60), "green"), ((250, 250, 250), "white"),
     ((10, 10, 10), "black"), ((128, 128, 128), "grey"), ((240, 140, 20), "orange"), ((120, 70, 30), "brown")],
)  # fmt: skip
def test_colour_names(rgb, name):
    assert colour_names(Image.new("RGB", (40, 30), rgb)) == [name]


def test_colour_of_a_region():
    image = Image.new("RGB", (100, 100), (128, 128, 128))
    image.paste((220, 30, 30), (50, 0, 100, 100))  # the right half is red
    assert colour_names(image, (0.5, 0.0, 1.0, 1.0)) == ["red"]
    assert colour_names(image, (0.0, 0.0, 0.5, 1.0)) == ["grey"]


def test_non_max_suppression_keeps_one_box_per_object():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    assert non_max_suppression(boxes, np.array([0.6, 0.9, 0.5])) == [1, 2]


@pytest.fixture(scope="module")
def answers(describer):
    """The offline path with the Qwen2.5-Coder-0.5B gguf bundle (make setup builds it)."""
    from edgemm.runtime.llm import GenerationOptions, LanguageModel
    from edgemm.runtime.vision import ImageQuestion

    path = models_dir() / "qwen2.5-coder-0.5b-instruct-gguf"
    if not (path / "manifest.json").exists():
        pytest.skip(f"{path} missing: run `make setup`")
    router = ImageQuestion(describer=describer, lm=LanguageModel.load(path))

    def ask(question, photo) -> str:
        answer = router.ask(question, [photo], GenerationOptions(max_new_tokens=24))
        return "".join(answer.generation).lower()

    return ask


@pytest.mark.parametrize(
    "question, photo, expected",
    [
        ("How many people are in the photo?", lambda: skdata.astronaut(), ("1", "one")),
        ("How many cats are in the photo?", lambda: side_by_side(skdata.chelsea(), skdata.chelsea()), ("2", "two")),
        ("What colour is the motorcycle?", lambda: skdata.stereo_motorcycle()[0], ("red",)),
        ("What colour is the astronaut's suit?", lambda: skdata.astronaut(), ("orange",)),
        ("Is there a dog in the photo?", lambda: skdata.chelsea(), ("no",)),
    ],
)
def test_offline_answers_counts_and_colours(answers, question, photo, expected):
    answer = answers(question, photo())
    words = answer.replace(".", " ").replace(",", " ").split()
    assert any(e in words for e in expected), answer
    if "dog" in question:
        assert not answer.startswith("yes"), answer


def test_unsupported_tfjs_op_is_named(tmp_path):
    from edgemm.export.tfjs import convert, read_graph

    model = {
        "format": "graph-model",
        "modelTopology": {
            "node": [
                {"name": "x", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": [{"size": "1"}]}}}},
                {"name": "y", "op": "Erf", "input": ["x"]},
            ]
        },
        "signature": {"outputs": {"y:0": {"name": "y:0", "tensorShape": {"dim": [{"size": "1"}]}}}},
        "weightsManifest": [{"paths": [], "weights": []}],
    }
    (tmp_path / "model.json").write_text(json.dumps(model))
    with pytest.raises(ExportError, match="TF.js op Erf .*not supported"):
        convert(read_graph(tmp_path / "model.json"))


def test_npm_download_with_a_wrong_hash_leaves_nothing(tmp_path, monkeypatch):
    from edgemm.export import npm

    package = npm.NpmPackage("@scope/pkg", "1.0.0", "sha512-" + "A" * 86 + "==")

    class Response(io.BytesIO):
        headers = {"Content-Length": "15"}

    monkeypatch.setattr(npm.urllib.request, "urlopen", lambda url, timeout: Response(b"not the package"))
    with pytest.raises(ExportError, match="does not match its published sha512"):
        npm.fetch(package, cache=tmp_path)
    assert list(tmp_path.iterdir()) == []
