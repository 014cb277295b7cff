"""The offline image path on real photos: labels + OCR -> a grounded description -> the LLM's answer."""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from edgemm.runtime.bundle import default_bundle
from edgemm.runtime.llm import DEFAULT_SYSTEM
from edgemm.runtime.vision.describe import OCR_NOT_INSTALLED, SceneDescriber, TextReader, grounded_question
from tests.harness import edgemm

skdata = pytest.importorskip("skimage.data")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def describer():
    path = default_bundle("vision")
    if not (path / "manifest.json").exists():
        pytest.skip(f"default vision bundle missing at {path}: run `make setup`")
    return SceneDescriber.load(path)


def _cli(*args):
    return edgemm(*args, timeout=300)


def test_description_says_only_what_was_found(describer):
    cat, coffee = describer.facts(skdata.chelsea()), describer.facts(skdata.coffee())
    assert "an animal:" in cat.describe() and "cat" in cat.describe()
    assert "no animal" in coffee.describe() and "espresso" in coffee.describe()
    prompt = grounded_question("What is this?", [cat, coffee])
    assert "Photo 1 description" in prompt and "Photo 2 description" in prompt


def test_image_question_routes_to_the_offline_path(describer, llm_bundle, monkeypatch):
    """With an llm bundle the router describes the photo and the LLM answers from the description, under the system
    prompt given, or inside a conversation."""
    from edgemm.runtime.llm import Chat, GenerationOptions
    from edgemm.runtime.vision import ImageQuestion

    monkeypatch.setenv("EDGEMM_VLM", str(llm_bundle))  # not a vlm bundle: ignored
    router = ImageQuestion.load()
    assert router.route == "describe"
    options = GenerationOptions(max_new_tokens=24)
    answer = router.ask("What animal is this?", [skdata.chelsea()], options)
    assert "cat" in answer.generation.result().lower() and answer.route == "describe"
    assert len(answer.facts) == 1 and "cat" in answer.facts[0].describe()
    prompt = router.lm.tokenizer.decode(answer.generation.prompt)
    assert "Photo description: Objects detected: one brown cat" in prompt and DEFAULT_SYSTEM in prompt
    terse = router.ask("What animal is this?", [skdata.chelsea()], options, system="Answer in one word.")
    assert "Answer in one word." in router.lm.tokenizer.decode(terse.generation.prompt)
    chat = Chat(router.lm, options=options)
    router.ask("What animal is this?", [skdata.chelsea()], chat=chat).generation.result()
    assert len(chat.turns) == 1 and chat.turns[0][0].startswith("Photo description:")


def test_ocr_reads_the_page():
    if not TextReader.available():
        pytest.skip("OCR extra not installed (pip install 'edgemm[ocr]')")
    page = np.stack([skdata.page()] * 3, axis=-1)
    text = " ".join(line for line, _confidence in TextReader().read(page)).lower()
    for word in ("markers", "coins", "background", "histogram"):
        assert word in text, text


def test_ask_about_a_cat_photo(describer, llm_bundle, tmp_path):
    path = tmp_path / "chelsea.png"
    Image.fromarray(skdata.chelsea()).save(path)
    out = _cli("ask", "--image", path, "What animal is this?", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert "cat" in result["answer"].lower(), result
    assert any("cat" in label["name"] for label in result["images"][0]["labels"][:3])


def test_ask_with_a_bad_image(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = _cli("ask", "--image", path, "What is this?")
    assert out.returncode == 2 and out.stderr.startswith("edgemm: error:") and "Traceback" not in out.stderr


def test_answer_does_not_invent_an_animal(describer, llm_bundle, tmp_path):
    path = tmp_path / "coffee.png"
    Image.fromarray(skdata.coffee()).save(path)
    out = _cli("ask", "--image", path, "What animal is this?")
    assert out.returncode == 0, out.stderr
    answer = out.stdout.lower()
    words = answer.replace(".", " ").replace(",", " ").split()
    assert not any(a in words for a in ("cat", "dog", "bird", "horse")), answer


@pytest.mark.parametrize("size", [(1, 1), (3000, 20), (20, 3000)])
def test_extreme_image_shapes(describer, size):
    facts = describer.facts(Image.new("RGB", size, (200, 30, 30)))
    assert facts.labels and "The photo as a whole looks like" in facts.describe()


def _sign() -> Image.Image:
    """The README's sign.png: "OPEN 9 TO 5" in black on white."""
    image = Image.new("RGB", (640, 240), "white")
    ImageDraw.Draw(image).text((40, 70), "OPEN 9 TO 5", fill="black", font=ImageFont.load_default(size=72))
    return image


def test_a_sign_without_the_ocr_extra_is_not_made_up(llm_bundle, monkeypatch):
    """Without the ocr extra (its packages not found, as TextReader.available() looks for them) the question about
    the sign is told that no text could be read and why, and the answer says it cannot read it instead of making a
    text up (it said 'The sign says "No animal found."')."""
    from edgemm.runtime.llm import GenerationOptions
    from edgemm.runtime.vision import ImageQuestion, ocr

    monkeypatch.setattr(ocr, "installed", lambda module: False)
    router = ImageQuestion.load(on_demand=False)
    assert router.describer.reader is None
    answer = router.ask("What does the sign say?", [_sign()], GenerationOptions(max_new_tokens=32))
    assert answer.facts[0].unread == OCR_NOT_INSTALLED and answer.facts[0].text == []
    prompt = router.lm.tokenizer.decode(answer.generation.prompt)
    assert "No text could be read in the photo (the ocr extra is not installed)." in prompt
    said = answer.generation.result()
    assert "cannot read" in said.lower() and '"' not in said, said
