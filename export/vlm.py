"""``edgemm export vlm``: a LLaVA-family vision-language model -> three ONNX graphs in one ``vlm`` bundle.

- ``vision.onnx``: ``pixel_values`` [n, 3, H, W] -> ``image_features`` [n, tokens, text hidden] (the CLIP / SigLIP
  tower, the chosen hidden layer and feature selection, and the multimodal projector);
- ``embed.onnx`` and ``decoder.onnx``: the language model, built as ``edgemm export llm`` builds it.

The runtime reproduces the image processor (resize, centre crop, rescale, normalize) in numpy/Pillow, expands each
image token of the prompt to one token per image feature, as the checkpoint's processor does, and splices the
features into the token embeddings. SmolVLM / Idefics3 is not supported yet.
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
from edgemm.export.llm import ExportError, _quantization, _write_graphs
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


def load_vlm(source: str):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    try:
        model = LlavaForConditionalGeneration.from_pretrained(source, dtype=torch.float32).eval()
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise SourceError(f"cannot load {source!r} as a LLaVA model: {str(e).splitlines()[0]}") from None
    if model.config.text_config.model_type not in ("llama", "qwen2"):
        raise SourceError(f"{source}: language model {model.config.text_config.model_type!r} is not supported")
    return model, processor


def image_processor_config(processor) -> dict:
    ip = processor.image_processor
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


def _export_vision(model, path: Path, image_size: tuple[int, int]) -> None:
    example = torch.zeros(2, 3, *image_size)
    torch.onnx.export(
        _ImageFeatures(model),
        example,
        str(path),
        input_names=["pixel_values"],
        output_names=["image_features"],
        dynamic_axes={"pixel_values": {0: "images"}, "image_features": {0: "images"}},
        opset_version=17,
        dynamo=False,
    )


def export_vlm(source: str, quant: str, out: Path, measure: bool = True) -> dict:
    from edgemm.export.llm_source import LLMCheckpoint, save_tokenizer
    from edgemm.runtime.vlm import VisionLanguageModel, preprocess

    if quant not in QUANTS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTS)}, not {quant!r}")
    model, processor = load_vlm(source)
    text = model.model.language_model
    cfg = decoder_config(model.config.text_config)
    weights = decoder_weights(text, model.lm_head, cfg)
    pre = image_processor_config(processor)
    if pre["crop"] is None:
        raise SourceError(f"{source}: image processors without a centre crop are not supported yet")
    tokenizer = processor.tokenizer
    tokenizer.chat_template = processor.chat_template or tokenizer.chat_template
    ck = LLMCheckpoint(model, tokenizer, source)
    with torch.no_grad():
        tokens = int(_ImageFeatures(model)(torch.zeros(1, 3, *pre["crop"])).shape[1])
    body = {
        "name": out.name,
        "source": source,
        "model": {"architecture": "llava", "text": model.config.text_config.model_type, **cfg.as_dict()},
        "graphs": {"vision": "vision.onnx", "embed": "embed.onnx", "decoder": "decoder.onnx"},
        "special_tokens": ck.special_tokens(),
        "image": {
            "processor": pre,
            "token": processor.image_token,
            "token_id": int(model.config.image_token_index),
            "tokens_per_image": tokens,
        },
        "quantization": {**_quantization(quant, ck), "vision": "int8 dynamic" if quant != "fp32" else "fp32"},
    }
    with staging(out) as work:
        body.update(save_tokenizer(ck, work))
        _export_vision(model, work / "vision.onnx", tuple(pre["crop"]))
        _write_graphs(work, cfg, weights, "fp32")
        write_manifest(work, "vlm", body)
        # Parity of the fp32 graphs with PyTorch on a real-looking input.
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (pre["crop"][0] + 40, pre["crop"][1] + 10, 3), dtype=np.uint8)
        pixels = preprocess(image, pre)
        ref = processor.image_processor(image, return_tensors="np")["pixel_values"]
        pixel_diff = float(np.abs(pixels - ref).max())
        vlm = VisionLanguageModel.load(work)
        ours = vlm.image_features(pixels)
        with torch.no_grad():
            theirs = _ImageFeatures(model)(torch.from_numpy(ref)).numpy()
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
            _write_graphs(work, cfg, weights, quant)
            if measure:
                a = ort.InferenceSession(str(fp32 / "vision.onnx")).run(None, {"pixel_values": pixels})[0].ravel()
                b = ort.InferenceSession(str(work / "vision.onnx")).run(None, {"pixel_values": pixels})[0].ravel()
                body["fidelity"]["vision_int8_feature_cosine"] = round(
                    float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), 5
                )
            shutil.rmtree(fp32)
        manifest = write_manifest(work, "vlm", body)
    open_bundle(out, "vlm")
    return manifest
