"""LLaVA and Idefics3 (SmolVLM) export and runtime on tiny random models: pixel values and greedy tokens match
transformers."""

import numpy as np
import pytest

from edgemm.runtime.llm.generate import GenerationOptions
from edgemm.runtime.vision.vlm import VisionLanguageModel, preprocess
from tests.conftest import TINY_TEXT
from tests.harness import edgemm

torch = pytest.importorskip("torch")

LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>' }}{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from edgemm.bench.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer(extra_specials=("<image>",))
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), **TINY_TEXT, max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_id, projector_hidden_act="gelu"
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_TEMPLATE,
        num_additional_image_tokens=1,
    )
    return _export(model, processor, tmp_path_factory.mktemp("tiny-llava"))


def _export(model, processor, root):
    """Save as a transformers folder, export an fp32 vlm bundle; (model, processor, bundle)."""
    from edgemm.export.vlm import export_vlm

    model.save_pretrained(root / "hf")
    processor.save_pretrained(root / "hf")
    export_vlm(str(root / "hf"), "fp32", root / "bundle", measure=False)
    return model, processor, root / "bundle"


def test_image_question_routes_to_the_vlm(tiny_llava, monkeypatch):
    """A vlm bundle answers image questions itself: the router gives the same tokens as the model, passes a system
    prompt into the model's own template, and EDGEMM_VLM makes it the default."""
    from edgemm.runtime.vision import ImageQuestion

    _, _, bundle = tiny_llava
    photo, question, options = _photos()[0], "What is in the picture?", GenerationOptions(max_new_tokens=8)
    router = ImageQuestion.load(bundle)
    answer = router.ask(question, [photo], options)
    answer.generation.result()
    direct = VisionLanguageModel.load(bundle).ask(question, [photo], options)
    direct.result()
    assert answer.route == router.route == "vlm" and answer.facts == []
    assert answer.generation.prompt == direct.prompt and answer.generation.tokens == direct.tokens
    with_system = router.ask(question, [photo], options, system="Answer in French.").generation
    prompt = router.vlm.lm.tokenizer.decode(with_system.prompt, skip_special_tokens=False)
    assert "<|im_start|>system\nAnswer in French.<|im_end|>" in prompt and with_system.prompt != direct.prompt
    assert ImageQuestion.load(vision_model=bundle).route == "vlm"  # e.g. edgemm listen --vision-model VLM
    monkeypatch.setenv("EDGEMM_VLM", str(bundle))
    assert ImageQuestion.load().route == "vlm"


def _photos():
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (90, 70, 3), dtype=np.uint8), rng.integers(0, 256, (40, 120, 3), dtype=np.uint8)]


def test_cli_ask_with_a_vlm_bundle(tiny_llava, tmp_path):
    import json

    from PIL import Image

    _, _, bundle = tiny_llava
    photo = tmp_path / "a.png"
    Image.fromarray(_photos()[0]).save(photo)
    run = ["ask", "--model", bundle, "--max-tokens", "4"]
    out = edgemm(*run, "--image", photo, "What?", "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["new_tokens"] <= 4
    # set as the default for image questions
    env = {**__import__("os").environ, "EDGEMM_VLM": str(bundle)}
    out = edgemm("ask", "--image", photo, "What?", "--json", "--max-tokens", "2", timeout=300, env=env)
    assert out.returncode == 0 and json.loads(out.stdout)["model"] == bundle.name, out.stderr
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    out = edgemm(*run, "--image", bad, "What?", timeout=300)
    assert out.returncode == 2 and out.stderr.startswith("edgemm: error:") and "Traceback" not in out.stderr


IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image>' }}"
    "{% elif item['type'] == 'text' %}{{ ' ' + item['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_idefics3(tmp_path_factory):
    """A random SmolVLM-shaped Idefics3 (SigLIP tower on 64 px tiles, pixel shuffle, Llama) and its processor."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    from edgemm.bench.tiny import tiny_tokenizer

    grid = [f"<row_{r}_col_{c}>" for r in (1, 2) for c in (1, 2)]
    tokenizer = tiny_tokenizer(("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", *grid))
    vision = Idefics3VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=16
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), **TINY_TEXT, max_position_embeddings=1024, eos_token_id=tokenizer.eos_token_id
    )
    config = Idefics3Config(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).eval()
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(size={"longest_edge": 128}, max_image_size={"longest_edge": 64}),
        tokenizer=tokenizer,
        image_seq_len=4,
        chat_template=IDEFICS3_TEMPLATE,
    )
    return _export(model, processor, tmp_path_factory.mktemp("tiny-idefics3"))


FAMILIES = ["tiny_llava", "tiny_idefics3"]


@pytest.mark.parametrize("family", FAMILIES)
def test_pixel_values_match_the_processor(request, family):
    _, processor, bundle = request.getfixturevalue(family)
    vlm = VisionLanguageModel.load(bundle)
    for image in _photos():
        ref = processor.image_processor(image, return_tensors="np")["pixel_values"]
        ref = ref.reshape(-1, *ref.shape[-3:])  # Idefics3: [1 prompt, tiles, 3, H, W]
        ours, grid = preprocess(image, vlm.image["processor"])
        assert ours.shape == ref.shape and (grid is not None) == (family == "tiny_idefics3")
        np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n_images", [1, 2])
def test_greedy_tokens_match_transformers(request, family, n_images):
    from transformers import GenerationConfig

    model, processor, bundle = request.getfixturevalue(family)
    images = _photos()[:n_images]
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": "What is in the picture?"}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    batch = [images] if family == "tiny_idefics3" else images  # Idefics3's processor takes a list per prompt
    inputs = processor(images=batch, text=prompt, return_tensors="pt")
    inputs.pop("token_type_ids", None)
    config = GenerationConfig(max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        ref = model.generate(**inputs, generation_config=config)[0, inputs["input_ids"].shape[1] :].tolist()

    vlm = VisionLanguageModel.load(bundle)
    vlm.lm.eos_ids = set()
    gen = vlm.ask("What is in the picture?", images, GenerationOptions(max_new_tokens=32))
    gen.result()
    assert gen.prompt == inputs["input_ids"][0].tolist()
    assert gen.tokens == ref


@pytest.mark.parametrize("family", FAMILIES)
def test_quantized_export_records_fidelity(request, family, tmp_path):
    """int4 language model + int8 vision graph (the speech path's 8-bit recipe): the vision features stay close to
    fp32 on real photos, the manifest says so, and the bundle answers."""
    from edgemm.export.vlm import export_vlm

    _, _, bundle = request.getfixturevalue(family)
    out = tmp_path / "int4"
    manifest = export_vlm(str(bundle.parent / "hf"), "int4", out, measure=True)
    cosine = manifest["fidelity"]["vision_int8_feature_cosine"]
    assert cosine and min(cosine.values()) > 0.98, cosine
    assert manifest["quantization"]["scheme"] == "int4" and "fp32" not in {p.name for p in out.iterdir()}
    gen = VisionLanguageModel.load(out).ask("What?", _photos()[:1], GenerationOptions(max_new_tokens=4))
    gen.result()
    assert 1 <= len(gen.tokens) <= 4 or gen.finish_reason == "eos"
