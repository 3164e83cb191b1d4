"""The contact sheet of the corrections that wait for review: each image with its tile number (the
`tile` column of pending.csv), the label it was sent with and the model's answer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.core.fashion_mnist import IMAGE_SIZE

MAX_TILES = 100  # the first 100 (oldest); pending.csv lists them all
COLUMNS = 10
SCALE = 3  # 28 px -> 84 px, large enough to judge a garment
CAPTION = 26  # pixels under each image: two lines of PIL's built-in font


def contact_sheet(
    pixels: Sequence[np.ndarray], captions: Sequence[tuple[str, str]], title: str
) -> Image.Image:
    """A grid of the images (uint8 28x28), each with two caption lines, under a title line."""
    side = IMAGE_SIZE * SCALE
    cell_w, cell_h = side + 8, side + CAPTION + 8
    rows = max(1, -(-len(pixels) // COLUMNS))
    sheet = Image.new("L", (COLUMNS * cell_w, 20 + rows * cell_h), 255)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((4, 4), title, fill=0, font=font)
    for k, (image, lines) in enumerate(zip(pixels, captions, strict=True)):
        x, y = (k % COLUMNS) * cell_w + 4, 20 + (k // COLUMNS) * cell_h + 4
        tile = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="L")
        sheet.paste(tile.resize((side, side), Image.Resampling.NEAREST), (x, y))
        draw.text((x, y + side + 1), lines[0], fill=0, font=font)
        draw.text((x, y + side + 13), lines[1], fill=0, font=font)
    return sheet
