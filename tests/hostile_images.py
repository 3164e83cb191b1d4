"""Valid image files built to be hard on a decoder, as Hypothesis strategies.

Random bytes and corrupted files stop at the first check; these get through it: every mode,
bit depth and transparency the formats allow, sizes from 1x1 to well past the decode budget,
animations of many frames, every EXIF orientation, progressive JPEGs. The content is solid
colour with a few rectangles, so even a 6000x6000 file encodes in a fraction of a second and
stays small: what makes them hostile is what they declare, not their bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from hypothesis import strategies as st
from PIL import Image, ImageDraw

# The modes each format can store (PT: palette with a transparent entry). PNG's deepest grey is
# 16-bit (I;16): Pillow writes no 32-bit "I" PNG, and a decoder reads a 16-bit one as "I".
MODES = {
    "PNG": ("1", "L", "LA", "P", "PT", "RGB", "RGBA", "I;16"),
    "JPEG": ("L", "RGB", "CMYK"),
    "WEBP": ("RGB", "RGBA"),
    "BMP": ("1", "L", "P", "RGB"),
    "GIF": ("L", "P", "PT"),
}
ANIMATED = ("PNG", "WEBP", "GIF")
EXIF_FORMATS = ("PNG", "JPEG", "WEBP")
SIDES = (1, 2, 27, 28, 29, 83, 84, 167, 168, 500, 1000, 2500, 4000, 6000)


@dataclass(frozen=True)
class Hostile:
    """A built file and what it is (shown when a test fails)."""

    data: bytes
    what: str


def _frame(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    base = "P" if mode == "PT" else mode
    colour = {
        "1": 1,
        "L": 200,
        "LA": (200, 128),
        "P": 3,
        "RGB": (200, 30, 30),
        "RGBA": (200, 30, 30, 100),
        "I;16": 50_000,
        "CMYK": (0, 200, 200, 0),
    }
    image = Image.new(base, size, colour[base] if seed % 2 else 0)
    if base == "P":
        image.putpalette([(i * 37) % 256 for i in range(768)])  # one palette for every frame
    draw = ImageDraw.Draw(image)
    w, h = size
    for k in range(3):  # a few rectangles, so that it is not blank
        x0, y0 = (seed * (k + 3)) % max(1, w), (seed * (k + 5)) % max(1, h)
        draw.rectangle((x0, y0, x0 + w // 3, y0 + h // 4), fill=colour[base] if k % 2 else 0)
    return image


@st.composite
def hostile_uploads(draw: st.DrawFn, max_side: int = SIDES[-1]) -> Hostile:
    """A valid PNG/JPEG/WebP/BMP/GIF file of any mode, size, frame count and orientation."""
    fmt = draw(st.sampled_from(sorted(MODES)))
    mode = draw(st.sampled_from(MODES[fmt]))
    sides = [s for s in SIDES if s <= max_side]
    size = (draw(st.sampled_from(sides)), draw(st.sampled_from(sides)))
    big = size[0] * size[1] > 1_000_000
    frames = draw(st.integers(1, 3 if big else 40)) if fmt in ANIMATED else 1
    orientation = draw(st.integers(1, 8)) if fmt in EXIF_FORMATS else 1
    progressive = fmt == "JPEG" and draw(st.booleans())
    seed = draw(st.integers(0, 1000))
    images = [_frame(mode, size, seed + i) for i in range(frames)]
    options: dict = {}
    if mode == "PT":
        options["transparency"] = 0
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif
    if progressive:
        options["progressive"] = True
    if fmt == "WEBP":
        options["quality"] = 10  # fast
    if frames > 1:
        options.update(save_all=True, append_images=images[1:], duration=20)
    buf = io.BytesIO()
    images[0].save(buf, fmt, **options)
    what = f"{size[0]}x{size[1]} {mode} {fmt}, {frames} frame(s), orientation {orientation}"
    return Hostile(buf.getvalue(), what + (", progressive" if progressive else ""))
