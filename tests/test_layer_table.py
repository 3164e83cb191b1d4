"""The layer shape table on fixed cases: floor((n + 2p - f) / s) + 1, its text and its FLOPs."""

from __future__ import annotations

import pytest
from conv_blocks import conv_block

from pipeline.core.architecture import layer_table, output_size
from pipeline.reporting.flops import format_table, forward_flops

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("n", "f", "s", "padding", "expected"),
    [
        (28, 3, 1, "valid", 26),  # (28 - 3) / 1 + 1
        (28, 3, 1, "same", 28),  # p = 1
        (28, 5, 2, "valid", 12),  # floor(23 / 2) + 1
        (28, 3, 2, "same", 14),  # ceil(28 / 2): total padding 1 (p = 0.5)
        (7, 2, 2, "valid", 3),  # max pooling 7 -> 3 drops the last row/column
        (3, 5, 1, "valid", -1),  # does not fit
    ],
)
def test_output_size_formula(n, f, s, padding, expected):
    assert output_size(n, f, s, padding) == expected


def test_table_rows_and_text():
    rows = layer_table(28, [conv_block(strides=2, padding="same", batch_norm=False, dropout=0.0)])
    assert [(r.layer, r.n_in, r.p, r.n_out) for r in rows] == [
        ("conv_0", 28, 0.5, 14),
        ("pool_0", 14, 0.0, 7),
    ]
    text = format_table(rows)
    assert "floor((28 + 2*0.5 - 3) / 2) + 1 = 14" in text
    assert text.endswith("flatten: 7 x 7 x 4 = 196 features")
    # 14x14 outputs, each 3x3 taps x 1 input channel x 4 filters multiply-adds; then dense to 10.
    flops = forward_flops(
        28, [conv_block(strides=2, padding="same", batch_norm=False, dropout=0.0)], [], 10
    )
    assert flops == {"conv_0": 2 * 14 * 14 * 9 * 1 * 4, "probabilities": 2 * 196 * 10}
    costed = format_table(rows, flops)
    assert "0.01  floor((28 + 2*0.5 - 3) / 2) + 1 = 14" in costed
    assert costed.endswith(
        "forward pass: 0.0 MFLOPs per image (conv and dense layers; training takes about 3x that per image)"
    )
