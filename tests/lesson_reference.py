"""numpy's side of the /ui lesson's arithmetic, and the cases both of its test files work.

tests/test_lesson_math.py checks service/ui/lesson-math.js in Node against these functions on
these kernels, paddings, strides and pooling windows; tests/test_lesson.py checks what the page
shows in Chromium against the same functions on a served test image.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.core.architecture import total_padding

PADDINGS = ("valid", "same")
STRIDES = (1, 2, 3)  # the page's stride choices
POOL_WINDOWS = (2, 3)
POOL_STRIDES = (1, 2, 3)

TOP_SOBEL = [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]  # the page's "top Sobel"
LINE_RIGHT = [[0, 1, -1], [0, 1, -1], [0, 1, -1]]  # the page's "line: dark right of light"


def typed_kernels() -> list[np.ndarray]:
    """Kernels a person types: the top Sobel, a 5x5 of integers, a 4x4 of halves (decimals)."""
    rng = np.random.default_rng(7)
    return [
        np.array(TOP_SOBEL),
        rng.integers(-4, 5, (5, 5)),
        rng.integers(-9, 10, (4, 4)) / 2,
    ]


def kernel_text(kernel) -> str:
    """A kernel as typed into the page: one row per line, numbers separated by spaces."""
    return "\n".join(" ".join(str(w) for w in row) for row in np.asarray(kernel).tolist())


# The textbook examples the page loads in one click (service/ui/lesson.js, TEXTBOOK): the input
# and the kernel; the 4x4 one at stride 1, the 7x7 one at stride 2, both with valid padding.
TEXTBOOK_SMALL = (
    np.array([[3, 0, 1, 2], [1, 5, 8, 9], [2, 7, 2, 5], [0, 1, 3, 1]]),
    np.array([[1, 0, -1]] * 3),
)
TEXTBOOK_STRIDED = (
    np.array(
        [
            [2, 3, 7, 4, 6, 2, 9],
            [6, 6, 9, 8, 7, 4, 3],
            [3, 4, 8, 3, 8, 9, 7],
            [7, 8, 3, 6, 6, 3, 4],
            [4, 2, 1, 8, 3, 4, 6],
            [3, 2, 4, 1, 9, 8, 3],
            [0, 1, 3, 9, 2, 1, 4],
        ]
    ),
    np.array([[3, 4, 4], [1, 0, 2], [-1, 0, 3]]),
)
# What the 7x7 example gives at stride 2, valid: some copies of the course slide print 83 and 127
# for the two right-hand cells of the first two rows; the page says 88 and 117, as numpy does.
TEXTBOOK_STRIDED_OUTPUT = [[91, 100, 88], [69, 91, 117], [44, 72, 74]]


def pads(n: int, f: int, s: int, padding: str) -> tuple[int, int]:
    """Zero rows before and after, as Keras pads (the product's layer table uses the same rule)."""
    total = total_padding(n, f, s, padding)
    return total // 2, total - total // 2


def correlate(x: np.ndarray, kernel: np.ndarray, s: int, padding: str) -> np.ndarray:
    """Cross-correlation of (n, n) or (n, n, C) with (f, f) or (f, f, C): numpy's reference."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    if x.ndim == 2:
        x, kernel = x[..., None], kernel[..., None]
    before, after = pads(x.shape[0], kernel.shape[0], s, padding)
    padded = np.pad(x, ((before, after), (before, after), (0, 0)))
    windows = sliding_window_view(padded, kernel.shape[:2], axis=(0, 1))[::s, ::s]
    return np.einsum("rcCij,ijC->rc", windows, kernel)


def max_pool(x: np.ndarray, f: int, s: int) -> np.ndarray:
    return sliding_window_view(x, (f, f))[::s, ::s].max(axis=(2, 3))


def formula(n: int, f: int, s: int, padding: str) -> tuple[int, str]:
    """The output size floor((n + 2p - f) / s) + 1 and the formula as the page writes it."""
    p = total_padding(n, f, s, padding) / 2
    out = int((n + 2 * p - f) // s) + 1
    return out, f"floor(({n} + 2*{p:g} - {f}) / {s}) + 1 = {out}"


def values_text(out: np.ndarray) -> str:
    """An integer map as the page writes it: '[a b; c d]', negative numbers with a real minus."""
    rows = "; ".join(" ".join(f"{v:g}".replace("-", "\u2212") for v in row) for row in out)
    return f"[{rows}]"
