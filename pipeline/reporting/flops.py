"""The CNN's cost for people to read: the shape table as text with each layer's FLOPs (reporting
only: train prints it and the training benchmark compares networks by it)."""

from __future__ import annotations

from pipeline.core.architecture import LayerRow, layer_table


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
