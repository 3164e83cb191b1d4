"""Test images as photographs: the distribution shift benchmarks/feedback_loop.py measures.

Fashion-MNIST items are centred, fill their 28x28 frame and sit on pure black. Photographs of
clothes are not: a garment is shot on a light, uneven background (a wall, paper, a table), larger
or smaller, off-centre. `photograph` makes one from a test item: dark on a light graded background
with sensor noise, the item 40-75% of the frame's side at a random place, as a JPEG. After the
service's preprocessing (grayscale, inverted because the background is light, the whole frame
fitted to 28x28) the model sees a small off-centre item on a grey, noisy field, unlike anything it
was trained on, while a person still sees the garment at once.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

FRAME = 160  # pixels, square


def photograph(item: np.ndarray, rng: np.random.Generator, frame: int = FRAME) -> bytes:
    """A uint8 (28, 28) light-on-dark item -> JPEG bytes of it photographed (see the module)."""
    side = int(frame * rng.uniform(0.40, 0.75))
    x0, y0 = (int(rng.integers(0, frame - side + 1)) for _ in range(2))
    ink = np.asarray(Image.fromarray(item).resize((side, side), Image.Resampling.BICUBIC))
    ink = ink.astype(np.float32) / 255.0
    # A light background, brighter on one side, with a tint and noise.
    ramp = np.linspace(rng.uniform(190, 215), rng.uniform(225, 250), frame, dtype=np.float32)
    light = np.broadcast_to(ramp if rng.integers(2) else ramp[:, None], (frame, frame)).copy()
    tint = rng.uniform(0.93, 1.0, 3).astype(np.float32)
    photo = light[..., None] * tint + rng.normal(0, 6, (frame, frame, 3)).astype(np.float32)
    # The garment darkens what is behind it, by how much of it is there.
    cloth = rng.uniform(20, 70, 3).astype(np.float32)
    region = photo[y0 : y0 + side, x0 : x0 + side]
    photo[y0 : y0 + side, x0 : x0 + side] = region * (1 - ink[..., None]) + cloth * ink[..., None]
    buf = io.BytesIO()
    Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()
