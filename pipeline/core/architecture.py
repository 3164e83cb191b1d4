"""The CNN's spatial arithmetic, without TensorFlow: the layer shape table.

Every conv and pooling layer maps an n x n input to floor((n + 2p - f) / s) + 1, where f is the
kernel (or pool) size, s the stride and p the padding on each side. With padding "valid" p = 0.
With padding "same" Keras pads just enough that the output is ceil(n / s); when that total padding
is odd, the extra pixel goes to the bottom/right, so p is reported as total / 2 (e.g. 0.5).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

Padding = Literal["valid", "same"]


@dataclass(frozen=True)
class LayerRow:
    """One row of the shape table: a conv or max-pooling layer and what it does to the size."""

    layer: str
    kind: Literal["conv", "pool"]
    n_in: int
    f: int
    p: float
    s: int
    n_out: int
    channels: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def total_padding(n: int, f: int, s: int, padding: Padding) -> int:
    """Total padding (both sides) Keras applies along one axis."""
    if padding == "valid":
        return 0
    return max((math.ceil(n / s) - 1) * s + f - n, 0)


def output_size(n: int, f: int, s: int, padding: Padding) -> int:
    """floor((n + 2p - f) / s) + 1 with 2p the total padding; < 1 means the layer does not fit."""
    return (n + total_padding(n, f, s, padding) - f) // s + 1


def layer_table(input_size: int, conv_blocks: list) -> list[LayerRow]:
    """Shape table for conv blocks (objects with filters/kernel_size/strides/padding/pool).

    Rows are named like the Keras layers (conv_<i>, pool_<i>); errors name the params key.

    Stops at the first layer whose output would be smaller than 1x1 and raises ValueError naming it.
    """
    rows: list[LayerRow] = []
    n = input_size
    for i, block in enumerate(conv_blocks):
        steps = [
            (f"conv_{i}", f"conv_blocks[{i}]", block.kernel_size, block.strides, block.padding)
        ]
        if block.pool is not None:
            steps.append(
                (
                    f"pool_{i}",
                    f"conv_blocks[{i}].pool",
                    block.pool.size,
                    block.pool.strides,
                    "valid",
                )
            )
        for name, key, f, s, padding in steps:
            kind = "conv" if name.startswith("conv") else "pool"
            n_out = output_size(n, f, s, padding)
            if n_out < 1:
                raise ValueError(
                    f"model.{key}: a {kind} layer with f={f}, s={s}, padding={padding} "
                    f"cannot take a {n}x{n} input (output would be {n_out}x{n_out})"
                )
            p = total_padding(n, f, s, padding) / 2
            rows.append(LayerRow(name, kind, n, f, p, s, n_out, block.filters))
            n = n_out
    return rows
