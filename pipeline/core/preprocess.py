"""The one preprocessing path, shared by training, evaluation and the service.

The saved model's first layers turn uint8 28x28 pixels into what the convolutions take
(`preprocessing_layers` in pipeline/training/model.py), so every user of the model (evaluate, the
service, `mlflow models serve`) sends raw pixels and none can scale them differently.
`image_to_pixels` turns an arbitrary photo
or drawing (any size, any mode) into a Fashion-MNIST-like uint8 28x28 image: grayscale,
light-on-dark, fitted to 28x28 with its aspect ratio kept.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from pipeline.core.fashion_mnist import IMAGE_SIZE


def has_light_background(gray: Image.Image) -> bool:
    """True when the image's border is mostly light, i.e. a dark object on a light background."""
    a = np.asarray(gray)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return float(np.median(border)) > 127


def to_8bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit integer images (e.g. 16-bit PNGs) scaled to 8 bits; PIL's convert clips them."""
    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return image
    a = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(a / 257.0, 0, 255).round().astype(np.uint8))


def _flattened(image: Image.Image) -> Image.Image:
    """Upright, 8-bit, and without transparency: transparent pixels put on white first."""
    image = to_8bit(ImageOps.exif_transpose(image))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels have no colour of their own: put the picture on white first.
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    return image


def _fitted(image: Image.Image) -> np.ndarray:
    """An L or RGB image -> uint8 (28, 28[, 3]): the longer side scaled to 28, centred on black
    (the aspect ratio kept)."""
    scale = IMAGE_SIZE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resized = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = Image.new(image.mode, (IMAGE_SIZE, IMAGE_SIZE), 0)
    canvas.paste(resized, ((IMAGE_SIZE - size[0]) // 2, (IMAGE_SIZE - size[1]) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def image_to_pixels(image: Image.Image, invert: bool | None = None) -> tuple[np.ndarray, bool]:
    """Any PIL image -> (uint8 (28, 28), inverted): light object on a dark background like
    Fashion-MNIST, and whether the image had to be inverted to get there.

    invert=None inverts automatically when the background is light; True/False force it.
    """
    gray = _flattened(image).convert("L")
    if invert is None:
        invert = has_light_background(gray)
    if invert:
        gray = ImageOps.invert(gray)
    return _fitted(gray), invert


def image_to_colour_pixels(image: Image.Image, inverted: bool) -> np.ndarray | None:
    """A colour image -> uint8 (28, 28, 3): the fitting of `image_to_pixels` kept in colour,
    inverted as it inverted the grayscale (the /ui lesson on RGB channels). None for an image
    without colour bands (grayscale, black and white)."""
    if image.mode != "P" and len(image.getbands()) < 3:  # L, LA, 1, I, F: no colour to show
        return None
    rgb = _flattened(image).convert("RGB")
    return _fitted(ImageOps.invert(rgb) if inverted else rgb)
