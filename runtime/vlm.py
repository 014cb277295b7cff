"""Native vision-language models (LLaVA family): image processor in numpy/Pillow, vision graph, features spliced
into the token embeddings, then generation with the KV cache as for text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from edgemm.runtime.bundle import Bundle, open_bundle
from edgemm.runtime.chat import ChatTemplate, clean_text
from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.generate import Generation, GenerationOptions
from edgemm.runtime.image import load_image
from edgemm.runtime.llm import LanguageModel
from edgemm.runtime.sessions import create_session


def preprocess(image, p: dict) -> np.ndarray:
    """CLIP-style processing, as transformers' CLIPImageProcessor does it: shorter side to ``resize_shorter``
    (Pillow, the checkpoint's filter), centre crop, rescale, normalize -> [1, 3, H, W] float32."""
    image = load_image(image)
    if p["resize_shorter"]:
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        size = p["resize_shorter"]
        new_long = int(size * long / short)
        image = image.resize((size, new_long) if w <= h else (new_long, size), Image.Resampling(p["resample"]))
    if p["crop"]:
        ch, cw = p["crop"]
        w, h = image.size
        if w < cw or h < ch:  # pad with black, as transformers' center_crop does
            canvas = Image.new("RGB", (max(w, cw), max(h, ch)))
            canvas.paste(image, ((max(w, cw) - w) // 2, (max(h, ch) - h) // 2))
            image, (w, h) = canvas, canvas.size
        top, left = (h - ch) // 2, (w - cw) // 2
        image = image.crop((left, top, left + cw, top + ch))
    x = np.asarray(image, np.float32) * np.float32(p["rescale"])
    x = (x - np.asarray(p["mean"], np.float32)) / np.asarray(p["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32)


class VisionLanguageModel:
    def __init__(self, bundle: Bundle, threads: int | None = None, context: int | None = None):
        self.lm = LanguageModel(bundle, threads=threads, context=context)
        self.vision = create_session(bundle.file(bundle.manifest["graphs"]["vision"]), threads)
        self.image = bundle.manifest["image"]
        self.template = ChatTemplate(self.lm.chat_template, self.lm.special)

    @classmethod
    def load(cls, path: str | Path | None = None, threads: int | None = None, context: int | None = None):
        return cls(open_bundle(path, "vlm"), threads=threads, context=context)

    def image_features(self, pixels: np.ndarray) -> np.ndarray:
        return self.vision.run(None, {"pixel_values": pixels})[0]

    def prompt_ids(self, question: str, n_images: int) -> list[int]:
        """The chat prompt with every image token expanded to one token per image feature."""
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
        text = self.template.render([{"role": "user", "content": content}], add_generation_prompt=True)
        token = self.image["token"]
        if text.count(token) != n_images:
            raise EdgemmError(f"the chat template placed {text.count(token)} image tokens for {n_images} images")
        text = text.replace(token, token * self.image["tokens_per_image"])
        return self.lm.tokenizer.encode(text, add_special_tokens=False).ids

    def ask(self, question: str, images: list, options: GenerationOptions | None = None) -> Generation:
        question = clean_text(question)
        pixels = np.concatenate([preprocess(image, self.image["processor"]) for image in images]) if images else None
        ids = self.prompt_ids(question, len(images))
        embeds = self.lm.embed(ids)
        if pixels is not None:
            features = self.image_features(pixels).reshape(-1, embeds.shape[-1])
            at = np.flatnonzero(np.asarray(ids) == self.image["token_id"])
            if len(at) != len(features):
                raise EdgemmError(f"{len(at)} image positions in the prompt for {len(features)} image features")
            embeds[0, at] = features
        return Generation(self.lm, self.lm.new_cache(), ids, options or GenerationOptions(), embeds=embeds)
