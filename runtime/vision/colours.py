"""Colour names for a photo or a region of it: every pixel is named by hue, saturation and brightness, and the
names covering enough of the region are reported, most common first.

The names are the eleven basic colour terms of English (Berlin and Kay): black, white, grey, red, orange, yellow,
green, blue, purple, pink, brown. Brown is a dark or muted orange (or a dark, dull red); pink a light, muted red.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MIN_SHARE = 0.2  # a colour is named when at least this share of the region has it
MAX_NAMES = 2
VIVID_WEIGHT = 2  # a vivid pixel (saturated and not dark) counts this much: a red bike in a grey garage is red
SAMPLE_SIDE = 64  # the region is reduced to at most this many pixels a side first: the names need no detail
# hue (degrees) upper bounds of the chromatic names; red wraps around 360
HUES = ((10, "red"), (40, "orange"), (70, "yellow"), (165, "green"), (255, "blue"), (290, "purple"), (335, "pink"))


def pixel_names(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One colour name per pixel of an [..., 3] uint8 RGB array, and whether each is vivid."""
    hsv = np.asarray(Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8).reshape(-1, 1, 3)).convert("HSV"))
    hue = hsv[:, 0, 0].astype(np.float32) * 360 / 255
    sat = hsv[:, 0, 1].astype(np.float32) / 255
    val = hsv[:, 0, 2].astype(np.float32) / 255
    names = np.full(hue.shape, "red", dtype=object)
    for upper, name in reversed(HUES):
        names[hue < upper] = name
    names[hue >= HUES[-1][0]] = "red"
    names[np.isin(names, ("orange", "yellow")) & (val < 0.6) & (sat > 0.25)] = "brown"
    names[(names == "red") & (val < 0.45) & (sat < 0.6)] = "brown"  # a dark saturated red stays red
    names[(names == "orange") & (sat <= 0.55) & (val < 0.8)] = "brown"
    names[(names == "red") & (sat < 0.45) & (val >= 0.6)] = "pink"
    grey = sat < 0.2
    names[grey] = "grey"
    names[grey & (val >= 0.8)] = "white"
    names[val < 0.18] = "black"
    vivid = (sat > 0.4) & (val > 0.3)
    return names.reshape(rgb.shape[:-1]), vivid.reshape(rgb.shape[:-1])


def colour_names(image: Image.Image, box: tuple[float, float, float, float] | None = None, centre: float = 1.0):
    """The main colour names of ``image`` (or of ``box``: left, top, right, bottom as fractions), most common first.
    ``centre`` < 1 keeps only that central part of the box, where the object is rather than its background."""
    w, h = image.size
    left, top, right, bottom = box or (0.0, 0.0, 1.0, 1.0)
    margin_x, margin_y = (right - left) * (1 - centre) / 2, (bottom - top) * (1 - centre) / 2
    crop = (
        int((left + margin_x) * w),
        int((top + margin_y) * h),
        max(int((right - margin_x) * w), int((left + margin_x) * w) + 1),
        max(int((bottom - margin_y) * h), int((top + margin_y) * h) + 1),
    )
    region = image.convert("RGB").crop(crop)
    region.thumbnail((SAMPLE_SIDE, SAMPLE_SIDE))
    names, vivid = pixel_names(np.asarray(region))
    weights = np.where(vivid, VIVID_WEIGHT, 1).ravel()
    names, index = np.unique(names.ravel(), return_inverse=True)
    share = np.bincount(index, weights) / weights.sum()
    ranked = sorted(zip(share, names, strict=True), reverse=True)
    return [str(name) for s, name in ranked if s >= MIN_SHARE][:MAX_NAMES] or [str(ranked[0][1])]
