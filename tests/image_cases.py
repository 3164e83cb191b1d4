"""Ordinary uploads of every format and mode the service takes, built the same on every run.

`CASES` are what people send: photos, screenshots, drawings, scans; small and 12 MP; PNG, JPEG
(baseline, progressive, CMYK, EXIF-rotated), WebP, BMP, GIF; grayscale, colour, palette,
transparency, 16-bit. tests/data/preprocess_golden.npz holds the 28x28 pixels the service's
preprocessing gave for each before it was made to decode in bounded memory; tests/test_preprocess.py
checks that it still gives them (`python tests/image_cases.py --write` records them anew).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

GOLDEN = Path(__file__).parent / "data" / "preprocess_golden.npz"


def scene(width: int, height: int, seed: int, light: bool = False) -> np.ndarray:
    """An RGB 'photo' (height, width, 3): a soft-edged garment-like blob with texture on a
    graded background, cheap to make at 12 MP."""
    rng = np.random.default_rng(seed)
    y, x = np.ogrid[0:height, 0:width]
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6)
    rx, ry = width * rng.uniform(0.2, 0.35), height * rng.uniform(0.25, 0.4)
    inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    mask = np.clip(1.5 - inside, 0, 1).astype(np.float32)  # soft edge
    # Only exact arithmetic (no sin/exp: their last bits differ between CPUs' SIMD code paths).
    stripes = ((x // max(2, width // 40)) % 2).astype(np.float32)
    colour = rng.uniform(40, 230, 3).astype(np.float32)
    background = np.float32(235 if light else 20) + (y / height * 15).astype(np.float32)
    out = np.empty((height, width, 3), np.float32)
    for c in range(3):
        obj = colour[c] * (0.7 + 0.3 * stripes)
        out[..., c] = background * (1 - mask) + obj * mask
    return np.clip(out, 0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _with_orientation(image: Image.Image, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, fmt, exif=exif)


def _transparent(width: int, height: int, seed: int) -> Image.Image:
    rgb = scene(width, height, seed)
    alpha = np.where(rgb.mean(axis=2) > 60, 255, 0).astype(np.uint8)  # background transparent
    alpha[: height // 10] = 128  # and a half-transparent band
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def _palette_with_transparency(width: int, height: int, seed: int) -> Image.Image:
    image = Image.fromarray(scene(width, height, seed)).quantize(32)
    image.info["transparency"] = 0
    return image


def _sixteen_bit(width: int, height: int, seed: int) -> Image.Image:
    gray = scene(width, height, seed).mean(axis=2)
    return Image.fromarray((gray * 257 + np.arange(width) % 7).astype(np.uint16))


@dataclass(frozen=True)
class Case:
    """One upload: a name, its file bytes, and the invert setting it is sent with."""

    name: str
    build: Callable[[], bytes]
    invert: bool | None = None
    colour: bool = False  # a colour image: /explain also returns its 28x28 RGB pixels


def _rgb(w: int, h: int, seed: int, light: bool = False) -> Image.Image:
    return Image.fromarray(scene(w, h, seed, light))


CASES = (
    Case("28x28 L PNG", lambda: encode(_rgb(28, 28, 1).convert("L"), "PNG")),
    Case("100x60 L PNG", lambda: encode(_rgb(100, 60, 2).convert("L"), "PNG")),
    Case("167x120 RGB PNG, light", lambda: encode(_rgb(167, 120, 3, True), "PNG"), colour=True),
    Case("300x200 RGB PNG, light", lambda: encode(_rgb(300, 200, 4, True), "PNG"), colour=True),
    Case("300x200 RGB PNG, invert", lambda: encode(_rgb(300, 200, 4), "PNG"), True, True),
    Case("300x200 RGB PNG, no invert", lambda: encode(_rgb(300, 200, 4, True), "PNG"), False),
    Case("640x480 RGB PNG", lambda: encode(_rgb(640, 480, 5), "PNG"), colour=True),
    Case("1201x1601 RGBA PNG", lambda: encode(_transparent(1201, 1601, 6), "PNG"), colour=True),
    Case("800x800 LA PNG", lambda: encode(_transparent(800, 800, 7).convert("LA"), "PNG")),
    Case(
        "500x700 P PNG, tRNS",
        lambda: encode(_palette_with_transparency(500, 700, 8), "PNG"),
        colour=True,
    ),
    Case("500x500 P GIF", lambda: encode(_rgb(500, 500, 9).quantize(64), "GIF"), colour=True),
    Case("300x300 1-bit BMP", lambda: encode(_rgb(300, 300, 10).convert("1"), "BMP")),
    Case("640x480 RGB BMP", lambda: encode(_rgb(640, 480, 11, True), "BMP"), colour=True),
    Case("401x301 16-bit PNG", lambda: encode(_sixteen_bit(401, 301, 12), "PNG")),
    Case("640x480 WebP lossy", lambda: encode(_rgb(640, 480, 13), "WEBP", quality=80), colour=True),
    Case(
        "600x400 WebP lossless RGBA",
        lambda: encode(_transparent(600, 400, 14), "WEBP", lossless=True),
        colour=True,
    ),
    *(
        Case(
            f"300x200 PNG, EXIF orientation {o}",
            lambda o=o: _with_orientation(_rgb(300, 200, 15), "PNG", o),
            colour=True,
        )
        for o in range(2, 9)
    ),
    Case(
        "2400x1800 RGB PNG, EXIF orientation 8",
        lambda: _with_orientation(_rgb(2400, 1800, 25, True), "PNG", 8),
        colour=True,
    ),
    Case("1601x1201 16-bit PNG", lambda: encode(_sixteen_bit(1601, 1201, 26), "PNG")),
    Case("2000x100 RGB PNG, wide", lambda: encode(_rgb(2000, 100, 16), "PNG")),
    Case("90x2500 L PNG, tall", lambda: encode(_rgb(90, 2500, 17).convert("L"), "PNG")),
    # JPEGs: decoded at a reduced scale (JPEG draft) when large, so these may differ slightly
    Case("80x60 RGB JPEG", lambda: encode(_rgb(80, 60, 18), "JPEG", quality=90), colour=True),
    Case("640x480 RGB JPEG", lambda: encode(_rgb(640, 480, 19), "JPEG", quality=90), colour=True),
    Case(
        "4000x3000 RGB JPEG",
        lambda: encode(_rgb(4000, 3000, 20, True), "JPEG", quality=85),
        colour=True,
    ),
    Case(
        "3000x4000 progressive JPEG",
        lambda: encode(_rgb(3000, 4000, 21), "JPEG", quality=85, progressive=True),
        colour=True,
    ),
    Case(
        "1200x900 JPEG, EXIF orientation 6",
        lambda: _with_orientation(_rgb(1200, 900, 22), "JPEG", 6),
        colour=True,
    ),
    Case(
        "500x400 CMYK JPEG", lambda: encode(_rgb(500, 400, 23).convert("CMYK"), "JPEG"), colour=True
    ),
    Case("1000x800 L JPEG", lambda: encode(_rgb(1000, 800, 24, True).convert("L"), "JPEG")),
)


def write_golden() -> None:
    """Record what today's preprocessing gives for every case (run before changing it)."""
    from pipeline.core.preprocess import image_to_colour_pixels, image_to_pixels

    arrays: dict[str, np.ndarray] = {}
    for i, case in enumerate(CASES):
        image = Image.open(io.BytesIO(case.build()))
        pixels, inverted = image_to_pixels(image, invert=case.invert)
        arrays[f"{i}/pixels"] = pixels
        arrays[f"{i}/inverted"] = np.array(inverted)
        if case.colour:
            arrays[f"{i}/colour"] = image_to_colour_pixels(
                Image.open(io.BytesIO(case.build())), inverted
            )
    arrays["names"] = np.array([case.name for case in CASES])
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, **arrays)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--write"]:
        write_golden()
