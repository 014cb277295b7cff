"""Native vision-language models (LLaVA family, SmolVLM / Idefics3): the image processors in numpy/Pillow, the
vision graph, features spliced into the token embeddings, then generation with the KV cache as for text."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from edgemm.runtime.bundle import MAX_IMAGE_SIDE, Bundle, open_bundle
from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.llm.chat import ChatTemplate, clean_text
from edgemm.runtime.llm.generate import Generation, GenerationOptions
from edgemm.runtime.llm.model import LanguageModel
from edgemm.runtime.sessions import create_session
from edgemm.runtime.vision.image import MAX_PIXELS, ImageError, load_image


def _normalize(image: Image.Image, p: dict) -> np.ndarray:
    x = np.asarray(image, np.float32) * np.float32(p["rescale"])
    x = (x - np.asarray(p["mean"], np.float32)) / np.asarray(p["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), np.float32)


def _idefics3_size(h: int, w: int, longest: int) -> tuple[int, int]:
    """Longest edge to ``longest`` (up or down), the other even; then capped at MAX_IMAGE_SIDE."""
    ratio = w / h
    if w >= h:
        w, h = longest, int(longest / ratio)
        h += h % 2
    else:
        h, w = longest, int(longest * ratio)
        w += w % 2
    if w >= h and w > MAX_IMAGE_SIDE:
        w, h = MAX_IMAGE_SIDE, int(MAX_IMAGE_SIDE / ratio)
    elif h > w and h > MAX_IMAGE_SIDE:
        h, w = MAX_IMAGE_SIDE, int(MAX_IMAGE_SIDE * ratio)
    return max(h, 1), max(w, 1)


def preprocess_idefics3(image: Image.Image, p: dict) -> tuple[np.ndarray, tuple[int, int]]:
    """As transformers' Idefics3ImageProcessor: resize, round up to whole tiles, split into tiles (row by row) plus
    the whole image at tile size -> ([tiles, 3, T, T], (rows, cols)); (0, 0) when the image is one tile."""
    resample, tile = Image.Resampling(p["resample"]), p["tile"]
    # without a longest edge to resize to, a big image still stops at MAX_IMAGE_SIDE (and so at a few tiles)
    longest = p["longest_edge"] or (MAX_IMAGE_SIDE if max(image.size) > MAX_IMAGE_SIDE else None)
    if longest:
        h, w = _idefics3_size(image.height, image.width, longest)
        image = image.resize((w, h), resample)
    if not p["split"]:
        return np.stack([_normalize(image.resize((tile, tile), resample), p)]), (0, 0)
    w, h = image.size
    ratio = w / h
    if w >= h:
        w = math.ceil(w / tile) * tile
        h = math.ceil(int(w / ratio) / tile) * tile
    else:
        h = math.ceil(h / tile) * tile
        w = math.ceil(int(h * ratio) / tile) * tile
    image = image.resize((w, h), resample)
    if h <= tile and w <= tile:
        return np.stack([_normalize(image, p)]), (0, 0)
    rows, cols = math.ceil(h / tile), math.ceil(w / tile)
    tiles = [image.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile)) for r in range(rows) for c in range(cols)]
    tiles.append(image.resize((tile, tile), resample))
    return np.stack([_normalize(t, p) for t in tiles]), (rows, cols)


def preprocess(image, p: dict) -> tuple[np.ndarray, tuple[int, int] | None]:
    """The checkpoint's image processing -> (pixel values [n, 3, H, W], tile grid or None)."""
    image = load_image(image)
    if p["type"] == "idefics3":
        return preprocess_idefics3(image, p)
    return preprocess_clip(image, p)[None], None


def preprocess_clip(image: Image.Image, p: dict) -> np.ndarray:
    """As transformers' CLIPImageProcessor: shorter side to ``resize_shorter`` (Pillow, the checkpoint's filter),
    centre crop, rescale, normalize -> [3, H, W] float32."""
    if p["resize_shorter"]:
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        size = p["resize_shorter"]
        new_long = int(size * long / short)
        if size * new_long > MAX_PIXELS:
            raise ImageError(f"the image is {w}x{h}: too narrow to scale its shorter side to {size} px")
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
    return _normalize(image, p)


def idefics3_prompt(grid: tuple[int, int], image: dict) -> str:
    """The text that stands for one image, as Idefics3's processor writes it."""
    fake, token, n = image["fake_token"], image["token"], image["tokens_per_image"]
    rows, cols = grid
    whole = f"{fake}{image['global_token']}{token * n}{fake}"
    if rows == 0 and cols == 0:
        return whole
    text = ""
    for r in range(rows):
        text += "".join(f"{fake}<row_{r + 1}_col_{c + 1}>{token * n}" for c in range(cols)) + "\n"
    return f"{text}\n{whole}"


class VisionLanguageModel:
    """A vlm bundle: vision graph + language model. Safe to share between threads: each ``ask`` gets a new KV cache,
    and the sessions allow concurrent runs."""

    def __init__(self, bundle: Bundle, threads: int | None = None, context: int | None = None):
        self.lm = LanguageModel(bundle, threads=threads, context=context)
        self.vision = create_session(bundle.file(bundle.section("graphs").get("vision")), threads)
        self.image = bundle.manifest["image"]
        self.template = ChatTemplate(self.lm.chat_template, self.lm.special)

    @classmethod
    def load(cls, path: str | Path | None = None, threads: int | None = None, context: int | None = None):
        return cls(open_bundle(path, "vlm"), threads=threads, context=context)

    def image_features(self, pixels: np.ndarray) -> np.ndarray:
        return self.vision.run(None, {"pixel_values": pixels})[0]

    def prompt_ids(self, question: str, grids: list, system: str | None = None) -> list[int]:
        """The chat prompt with every image token expanded as the checkpoint's processor does. Without a system
        prompt the chat template's own default applies."""
        n_images = len(grids)
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
        messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
        messages.append({"role": "user", "content": content})
        token = self.image["token"]

        def expand(text: str) -> str:  # the template's text only: image tokens in a question stay text
            if text.count(token) != n_images:
                raise EdgemmError(f"the chat template placed {text.count(token)} image tokens for {n_images} images")
            if self.image["processor"]["type"] == "idefics3":
                pieces = text.split(token)
                return pieces[0] + "".join(
                    idefics3_prompt(g, self.image) + rest for g, rest in zip(grids, pieces[1:], strict=True)
                )
            return text.replace(token, token * self.image["tokens_per_image"])

        return self.template.encode(self.lm.tokenizer, messages, expand)

    def ask(
        self, question: str, images: list, options: GenerationOptions | None = None, system: str | None = None
    ) -> Generation:
        question = clean_text(question)
        processed = [preprocess(image, self.image["processor"]) for image in images]
        pixels = np.concatenate([p for p, _ in processed]) if processed else None
        ids = self.prompt_ids(question, [grid for _, grid in processed], clean_text(system) if system else None)
        embeds = self.lm.embed(ids)
        if pixels is not None:
            features = self.image_features(pixels).reshape(-1, embeds.shape[-1])
            at = np.flatnonzero(np.asarray(ids) == self.image["token_id"])
            if len(at) != len(features):
                raise EdgemmError(f"{len(at)} image positions in the prompt for {len(features)} image features")
            embeds[0, at] = features
        return Generation(self.lm, self.lm.new_cache(), ids, options or GenerationOptions(), embeds=embeds)
