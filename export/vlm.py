"""``edgemm export vlm``: a LLaVA-family or SmolVLM / Idefics3 vision-language model -> three ONNX graphs in one
``vlm`` bundle.

- ``vision.onnx``: ``pixel_values`` [n, 3, H, W] -> ``image_features`` [n, tokens, text hidden]. LLaVA: the CLIP /
  SigLIP tower, the chosen hidden layer and feature selection, and the multimodal projector. Idefics3: the SigLIP
  tower on each 512 px tile (tiles are always whole: the processor resizes images to multiples of the tile size, so
  the patch positions are those of a full tile, baked in as a constant), then the pixel-shuffle connector;
- ``embed.onnx`` and ``decoder.onnx``: the language model, built as ``edgemm export llm`` builds it.

The runtime reproduces the image processor in numpy/Pillow (LLaVA: resize, centre crop; Idefics3: resize, split into
tiles plus the global image), expands each image token of the prompt as the checkpoint's processor does, and splices
the features into the token embeddings.

Steps (run by export/driver.py): load the checkpoint, export the fp32 graphs, check the vision path against
transformers, quantize, compare the int8 vision features with fp32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from edgemm.export.driver import Component, ExportJob, Step, build
from edgemm.export.errors import ExportError
from edgemm.export.llm import quantization_info, write_graphs
from edgemm.export.llm_onnx import SCHEMES, DecoderConfig, DecoderWeights
from edgemm.export.llm_source import LLMCheckpoint, decoder_config, decoder_weights, save_tokenizer
from edgemm.export.packaged import SourceError
from edgemm.export.quantize import quantize_int8
from edgemm.runtime.vision.vlm import VisionLanguageModel, preprocess

log = logging.getLogger(__name__)

QUANTS = tuple(SCHEMES)


class _ImageFeatures(torch.nn.Module):
    """pixel_values -> projected features of every image, batched (transformers' own get_image_features returns a
    Python list, which tracing would freeze at the example's image count)."""

    def __init__(self, model):
        super().__init__()
        self.tower, self.projector = model.model.vision_tower, model.model.multi_modal_projector
        self.layers = model.config.vision_feature_layer
        self.strategy = model.config.vision_feature_select_strategy

    def forward(self, pixel_values):
        hidden = self.tower(pixel_values, output_hidden_states=True).hidden_states
        layers = self.layers if isinstance(self.layers, list | tuple) else [self.layers]
        chosen = [hidden[i][:, 1:] if self.strategy == "default" else hidden[i] for i in layers]
        return self.projector(torch.cat(chosen, dim=-1))


class _Idefics3Features(torch.nn.Module):
    """pixel_values of whole tiles -> connector output. Positions: those transformers computes for a full tile."""

    def __init__(self, model):
        super().__init__()
        vision = model.model.vision_model
        self.vision, self.connector = vision, model.model.connector
        e = vision.embeddings
        side = e.num_patches_per_side
        with torch.no_grad():  # the position ids transformers' own loop gives a full tile, its rounding included
            probe = torch.zeros(1, 3, side * e.patch_size, side * e.patch_size)
            offsets = e(probe, torch.ones(1, side, side, dtype=torch.bool)) - e.patch_embedding(probe).flatten(
                2
            ).transpose(1, 2)
            ids = torch.cdist(offsets[0], e.position_embedding.weight).argmin(-1)
        self.register_buffer("position_ids", ids[None], persistent=False)

    def forward(self, pixel_values):
        e = self.vision.embeddings
        x = e.patch_embedding(pixel_values).flatten(2).transpose(1, 2) + e.position_embedding(self.position_ids)
        x = self.vision.encoder(inputs_embeds=x).last_hidden_state
        return self.connector(self.vision.post_layernorm(x))


def load_vlm(source: str):
    from transformers import AutoConfig, AutoProcessor, Idefics3ForConditionalGeneration, LlavaForConditionalGeneration

    try:
        kind = AutoConfig.from_pretrained(source).model_type
        if kind not in ("llava", "idefics3"):
            raise SourceError(f"{source}: model type {kind!r} is not supported (llava, idefics3)")
        cls = LlavaForConditionalGeneration if kind == "llava" else Idefics3ForConditionalGeneration
        model = cls.from_pretrained(source, dtype=torch.float32).eval()
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise SourceError(f"cannot load {source!r}: {str(e).splitlines()[0]}") from None
    if model.config.text_config.model_type not in ("llama", "qwen2"):
        raise SourceError(f"{source}: language model {model.config.text_config.model_type!r} is not supported")
    return model, processor


def image_processor_config(processor) -> dict:
    ip = processor.image_processor
    if type(ip).__name__.startswith("Idefics3"):
        return {
            "type": "idefics3",
            "longest_edge": int(ip.size["longest_edge"]) if ip.do_resize else None,
            "tile": int(ip.max_image_size["longest_edge"]),
            "split": bool(ip.do_image_splitting),
            "resample": int(ip.resample),
            "rescale": float(ip.rescale_factor) if ip.do_rescale else 1.0,
            "mean": [float(v) for v in ip.image_mean] if ip.do_normalize else [0.0, 0.0, 0.0],
            "std": [float(v) for v in ip.image_std] if ip.do_normalize else [1.0, 1.0, 1.0],
        }
    size = ip.size.get("shortest_edge") if isinstance(ip.size, dict) else ip.size
    crop = ip.crop_size if ip.do_center_crop else None
    return {
        "type": "clip",
        "resize_shorter": int(size) if ip.do_resize else None,
        "crop": [int(crop["height"]), int(crop["width"])] if crop else None,
        "resample": int(ip.resample),  # a Pillow resampling filter (3 = bicubic)
        "rescale": float(ip.rescale_factor) if ip.do_rescale else 1.0,
        "mean": [float(v) for v in ip.image_mean] if ip.do_normalize else [0.0, 0.0, 0.0],
        "std": [float(v) for v in ip.image_std] if ip.do_normalize else [1.0, 1.0, 1.0],
    }


def _export_vision(features: torch.nn.Module, path: Path, image_size: tuple[int, int]) -> None:
    example = torch.zeros(2, 3, *image_size)
    torch.onnx.export(
        features,
        example,
        str(path),
        input_names=["pixel_values"],
        output_names=["image_features"],
        dynamic_axes={"pixel_values": {0: "images"}, "image_features": {0: "images"}},
        opset_version=17,
        dynamo=False,
    )


def _vision_cosine(fp32: Path, int8: Path, pre: dict) -> dict:
    """Cosine similarity of int8 and fp32 image features on real photos (scikit-image's, when installed)."""
    try:
        import skimage.data

        photos = {name: getattr(skimage.data, name)() for name in ("chelsea", "coffee", "astronaut")}
    except ImportError:
        photos = {"random": np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)}
    a_session, b_session = ort.InferenceSession(str(fp32)), ort.InferenceSession(str(int8))
    result = {}
    for name, photo in photos.items():
        pixels = preprocess(photo, pre)[0]
        a = a_session.run(None, {"pixel_values": pixels})[0].ravel().astype(np.float64)
        b = b_session.run(None, {"pixel_values": pixels})[0].ravel().astype(np.float64)
        result[name] = round(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), 5)
    return result


# ---- the steps ----


@dataclass
class LoadedVLM:
    model: torch.nn.Module  # LlavaForConditionalGeneration or Idefics3ForConditionalGeneration
    processor: object  # the checkpoint's transformers processor: the reference for the image preprocessing
    preprocessing: dict  # the processor's parameters, as the runtime reproduces them (image_processor_config)
    features: torch.nn.Module  # pixel_values -> image_features, as exported
    image_size: tuple[int, int]  # the (height, width) the vision graph takes
    config: DecoderConfig
    weights: DecoderWeights


def describe(vlm: LoadedVLM, ck: LLMCheckpoint, quant: str) -> dict:
    """The manifest's description of the model: dimensions, special tokens, image preprocessing and tokens."""
    model, processor = vlm.model, vlm.processor
    idefics = model.config.model_type == "idefics3"
    with torch.no_grad():
        tokens = int(vlm.features(torch.zeros(1, 3, *vlm.image_size)).shape[1])
    return {
        "model": {
            "architecture": model.config.model_type,
            "text": model.config.text_config.model_type,
            **vlm.config.as_dict(),
        },
        "graphs": {"vision": "vision.onnx", "embed": "embed.onnx", "decoder": "decoder.onnx"},
        "special_tokens": ck.special_tokens(),
        "image": {
            "processor": vlm.preprocessing,
            "token": processor.image_token,
            "token_id": int(model.config.image_token_id if idefics else model.config.image_token_index),
            "tokens_per_image": tokens,
            **(
                {"fake_token": processor.fake_image_token, "global_token": processor.global_image_tag}
                if idefics
                else {}
            ),
        },
        "quantization": {**quantization_info(quant, ck), "vision": "int8 dynamic" if quant != "fp32" else "fp32"},
    }


def load(job: ExportJob) -> str:
    """The checkpoint, its tokenizer and chat template (written into the bundle), the manifest's description."""
    model, processor = load_vlm(job.source)
    idefics = model.config.model_type == "idefics3"
    text = model.model.text_model if idefics else model.model.language_model
    cfg = decoder_config(model.config.text_config)
    pre = image_processor_config(processor)
    size = [pre["tile"]] * 2 if idefics else pre["crop"]
    if size is None:
        raise SourceError(f"{job.source}: image processors without a centre crop are not supported yet")
    features = _Idefics3Features(model) if idefics else _ImageFeatures(model)
    weights = decoder_weights(text, model.lm_head, cfg)
    job.loaded = LoadedVLM(model, processor, pre, features, tuple(size), cfg, weights)
    tokenizer = processor.tokenizer
    tokenizer.chat_template = processor.chat_template or tokenizer.chat_template
    ck = LLMCheckpoint(model, tokenizer, job.source)
    job.body.update(describe(job.loaded, ck, job.quant))
    job.body.update(save_tokenizer(ck, job.work))
    architecture = f"{model.config.model_type} ({model.config.text_config.model_type})"
    return f"{job.source}: {architecture}, {job.body['image']['tokens_per_image']} tokens per image"


def fp32_graphs(job: ExportJob) -> str:
    vlm: LoadedVLM = job.loaded
    _export_vision(vlm.features, job.fp32 / "vision.onnx", vlm.image_size)
    write_graphs(job.fp32, vlm.config, vlm.weights, "fp32")
    return ", ".join(job.body["graphs"].values())


def parity(job: ExportJob) -> str:
    """The fp32 vision path (our preprocessing + graph) against transformers' on a random photo-sized input."""
    vlm: LoadedVLM = job.loaded
    height, width = vlm.image_size
    image = np.random.default_rng(0).integers(0, 256, (height + 40, width + 10, 3), dtype=np.uint8)
    pixels = preprocess(image, vlm.preprocessing)[0]
    ref = vlm.processor.image_processor(image, return_tensors="np")["pixel_values"].astype(np.float32)
    ref = ref.reshape(-1, *ref.shape[-3:])
    pixel_diff = float(np.abs(pixels - ref).max()) if pixels.shape == ref.shape else float("inf")
    ours = VisionLanguageModel(job.bundle(fp32=True)).image_features(pixels)
    with torch.no_grad():
        theirs = vlm.features(torch.from_numpy(ref)).numpy()
    feature_diff = float(np.abs(ours - theirs).max())
    if pixel_diff > 1e-4 or feature_diff > 1e-3:
        raise ExportError(
            f"vision path differs from transformers: pixels {pixel_diff:.2e}, features {feature_diff:.2e}"
        )
    job.fidelity.update({"pixel_values_max_diff": pixel_diff, "image_features_max_diff": float(f"{feature_diff:.3g}")})
    return f"pixel values max diff {pixel_diff:.2e}, image features {feature_diff:.2e}"


def quantize(job: ExportJob) -> str:
    quantize_int8(job.fp32 / "vision.onnx", job.work / "vision.onnx")
    write_graphs(job.work, job.loaded.config, job.loaded.weights, job.quant)
    return f"vision int8, language model {job.quant}"


def fidelity(job: ExportJob) -> str:
    cosine = _vision_cosine(job.fp32 / "vision.onnx", job.work / "vision.onnx", job.loaded.preprocessing)
    job.fidelity["vision_int8_feature_cosine"] = cosine
    return "int8 vs fp32 image feature cosine " + ", ".join(f"{name} {c}" for name, c in cosine.items())


VLM = Component(
    kind="vlm",
    quants=QUANTS,
    steps=(
        Step("load checkpoint", load),
        Step("export fp32 graphs", fp32_graphs),
        Step("check parity with transformers", parity),
        Step("quantize", quantize, quantized_only=True),
        Step("compare int8 vision with fp32", fidelity, quantized_only=True, measurement=True),
    ),
)


def export_vlm(source: str, quant: str, out: Path, measure: bool = True) -> dict:
    """Build a vlm bundle at ``out`` from a LLaVA-family or SmolVLM / Idefics3 source; return its manifest."""
    return build(VLM, source, quant, out, measure)
