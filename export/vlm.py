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
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from edgemm.export.bundle import staging, write_manifest
from edgemm.export.llm import ExportError, quantization_info, write_graphs
from edgemm.export.llm_onnx import SCHEMES
from edgemm.export.llm_source import decoder_config, decoder_weights
from edgemm.export.packaged import SourceError
from edgemm.runtime.bundle import open_bundle

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
        if isinstance(e, SourceError):
            raise
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
    from edgemm.runtime.vision.vlm import preprocess

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


def export_vlm(source: str, quant: str, out: Path, measure: bool = True) -> dict:
    from edgemm.export.llm_source import LLMCheckpoint, save_tokenizer
    from edgemm.runtime.vision.vlm import VisionLanguageModel, preprocess

    if quant not in QUANTS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTS)}, not {quant!r}")
    model, processor = load_vlm(source)
    idefics = model.config.model_type == "idefics3"
    features = _Idefics3Features(model) if idefics else _ImageFeatures(model)
    text = model.model.text_model if idefics else model.model.language_model
    cfg = decoder_config(model.config.text_config)
    weights = decoder_weights(text, model.lm_head, cfg)
    pre = image_processor_config(processor)
    size = [pre["tile"]] * 2 if idefics else pre["crop"]
    if size is None:
        raise SourceError(f"{source}: image processors without a centre crop are not supported yet")
    tokenizer = processor.tokenizer
    tokenizer.chat_template = processor.chat_template or tokenizer.chat_template
    ck = LLMCheckpoint(model, tokenizer, source)
    with torch.no_grad():
        tokens = int(features(torch.zeros(1, 3, *size)).shape[1])
    body = {
        "name": out.name,
        "source": source,
        "model": {
            "architecture": model.config.model_type,
            "text": model.config.text_config.model_type,
            **cfg.as_dict(),
        },
        "graphs": {"vision": "vision.onnx", "embed": "embed.onnx", "decoder": "decoder.onnx"},
        "special_tokens": ck.special_tokens(),
        "image": {
            "processor": pre,
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
    with staging(out) as work:
        body.update(save_tokenizer(ck, work))
        _export_vision(features, work / "vision.onnx", tuple(size))
        write_graphs(work, cfg, weights, "fp32")
        write_manifest(work, "vlm", body)
        # Parity of the fp32 vision path with transformers on a random photo-sized input.
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (size[0] + 40, size[1] + 10, 3), dtype=np.uint8)
        pixels = preprocess(image, pre)[0]
        ref = processor.image_processor(image, return_tensors="np")["pixel_values"].astype(np.float32)
        ref = ref.reshape(-1, *ref.shape[-3:])
        pixel_diff = float(np.abs(pixels - ref).max()) if pixels.shape == ref.shape else float("inf")
        vlm = VisionLanguageModel.load(work)
        ours = vlm.image_features(pixels)
        with torch.no_grad():
            theirs = features(torch.from_numpy(ref)).numpy()
        feature_diff = float(np.abs(ours - theirs).max())
        if pixel_diff > 1e-4 or feature_diff > 1e-3:
            raise ExportError(
                f"vision path differs from transformers: pixels {pixel_diff:.2e}, features {feature_diff:.2e}"
            )
        body["fidelity"] = {
            "pixel_values_max_diff": pixel_diff,
            "image_features_max_diff": float(f"{feature_diff:.3g}"),
        }
        if quant != "fp32":
            fp32 = work / "fp32"
            fp32.mkdir()
            for name in ("vision.onnx", "embed.onnx", "embed.onnx.data", "decoder.onnx", "decoder.onnx.data"):
                shutil.move(work / name, fp32 / name)
            quantize_dynamic(
                fp32 / "vision.onnx",
                work / "vision.onnx",
                op_types_to_quantize=["MatMul"],
                per_channel=False,
                weight_type=QuantType.QInt8,
            )
            write_graphs(work, cfg, weights, quant)
            if measure:
                body["fidelity"]["vision_int8_feature_cosine"] = _vision_cosine(
                    fp32 / "vision.onnx", work / "vision.onnx", pre
                )
            shutil.rmtree(fp32)
        manifest = write_manifest(work, "vlm", body)
    open_bundle(out, "vlm")
    return manifest
