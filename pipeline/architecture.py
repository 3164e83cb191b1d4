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


def format_table(rows: list[LayerRow], flops: dict[str, int] | None = None) -> str:
    """The shape table as aligned text, one layer per line, with the formula worked out; with
    `flops` (forward_flops), each conv layer's MFLOPs per image and the total."""
    header = f"{'layer':<22} {'kind':<5} {'n':>3} {'f':>2} {'p':>4} {'s':>2} {'out':>3} {'ch':>4}"
    header += f" {'MFLOP':>6}" if flops else ""
    header += "  formula"
    lines = [header, "-" * len(header)]
    for r in rows:
        formula = f"floor(({r.n_in} + 2*{r.p:g} - {r.f}) / {r.s}) + 1 = {r.n_out}"
        cost = ""
        if flops:
            cost = f" {flops[r.layer] / 1e6:>6.2f}" if r.layer in flops else f" {'':>6}"
        lines.append(
            f"{r.layer:<22} {r.kind:<5} {r.n_in:>3} {r.f:>2} {r.p:>4g} {r.s:>2} {r.n_out:>3} "
            f"{r.channels:>4}{cost}  {formula}"
        )
    if rows:
        last = rows[-1]
        features = last.n_out * last.n_out * last.channels
        lines.append(
            f"flatten: {last.n_out} x {last.n_out} x {last.channels} = {features} features"
        )
    if flops:
        lines.append(
            f"forward pass: {sum(flops.values()) / 1e6:.1f} MFLOPs per image "
            "(conv and dense layers; training takes about 3x that per image)"
        )
    return "\n".join(lines)


def forward_flops(input_size: int, conv_blocks: list, dense: list, classes: int) -> dict[str, int]:
    """Floating-point operations of one image's forward pass, per conv and dense layer (`dense`:
    objects with `units`, like params' model.dense).

    2 x multiply-adds: a conv layer does n_out^2 * f^2 * c_in * c_out of them, a dense layer
    inputs * units. Batch norm, activations and pooling (a few per activation) are left out: they
    are under 2% of the total for the networks here, though on a CPU they cost more than that share
    (they are memory-bound). Training costs about 3x the forward pass (forward, then gradients
    with respect to activations and to weights).
    """
    flops: dict[str, int] = {}
    channels = 1
    table = layer_table(input_size, conv_blocks)
    for row in (r for r in table if r.kind == "conv"):
        flops[row.layer] = 2 * row.n_out**2 * row.f**2 * channels * row.channels
        channels = row.channels
    last = table[-1]
    features = last.n_out**2 * last.channels
    for j, units in enumerate([*(d.units for d in dense), classes]):
        name = f"dense_{j}" if j < len(dense) else "probabilities"
        flops[name] = 2 * features * units
        features = units
    return flops
