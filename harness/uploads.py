"""Uploads built to be hard on the service's memory: the largest of each kind its decode budget
admits, and some it must refuse (tests/test_hostile_traffic.py, benchmarks/overload.py).

Solid colour with a shape, so that each is a small file that decodes to many megabytes.
"""

from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw

from pipeline.core.preprocess import BAND_BYTES_PER_PIXEL, BAND_PIXELS


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def marked(mode: str, side: int, colour: object) -> Image.Image:
    """A solid `side` x `side` image with a black square in it."""
    image = Image.new(mode, (side, side), colour)
    ImageDraw.Draw(image).rectangle((side // 4, side // 4, side // 2, side // 2), fill=0)
    return image


def worst_uploads(max_decode_mb: float) -> dict[str, bytes]:
    """The largest upload of each kind that a decode budget of `max_decode_mb` admits (a
    transparent PNG, a 16-bit PNG, a progressive JPEG, a 60-frame GIF, a WebP; their sides from
    the bytes a pixel takes decoded: pipeline/core/preprocess.py decode_bytes), and two it
    refuses (names starting "refused")."""
    free = max_decode_mb * 1e6 - BAND_PIXELS * BAND_BYTES_PER_PIXEL
    side = {per_pixel: math.isqrt(int(free / per_pixel * 0.97)) for per_pixel in (2, 3, 4, 16)}
    frames = [marked("P", 6000, 3)]
    for k in range(1, 60):  # many frames, each differing from the first in a small box
        frame = frames[0].copy()
        ImageDraw.Draw(frame).rectangle((k * 50, 0, k * 50 + 40, 40), fill=k)
        frames.append(frame)
    jpeg = marked("RGB", side[3], (90, 160, 20))  # 4:2:0: 3 bytes of coefficients a pixel
    return {
        "transparent PNG": encode(marked("RGBA", side[4], (200, 10, 10, 120)), "PNG"),
        "16-bit PNG": encode(marked("I;16", side[2], 40_000), "PNG"),
        "progressive JPEG": encode(jpeg, "JPEG", progressive=True, quality=90),
        "60-frame GIF": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "WebP": encode(marked("RGB", side[16], (10, 10, 200)), "WEBP", quality=50),
        "refused: 7000x7000 transparent PNG": encode(marked("RGBA", 7000, (0, 0, 0, 0)), "PNG"),
        "refused: 9000x9000 WebP": encode(marked("RGB", 9000, (1, 2, 3)), "WEBP", quality=10),
    }
