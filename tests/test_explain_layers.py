"""The explainer's layer geometry read from Keras layers, as the layer table computes it.

Small Keras models are built (not trained) with other params than params.yaml, as a champion
trained on other params would be.
"""

from __future__ import annotations

import pytest

from pipeline.core.architecture import layer_table

pytestmark = pytest.mark.model


def conv(filters: int, f: int, s: int, padding: str, batch_norm: bool, pool=None) -> dict:
    """One of params `model.conv_blocks` (pool: {"size", "strides"} or None)."""
    block = {"filters": filters, "kernel_size": f, "strides": s, "padding": padding}
    return block | {"batch_norm": batch_norm, "pool": pool}


@pytest.mark.parametrize(
    "blocks",
    [
        # params.yaml's own shape: same padding, 2x2 pools
        [conv(4, 3, 1, "same", True, {"size": 2, "strides": 2}), conv(6, 3, 1, "same", True)],
        # another champion's: a strided 'same' conv (odd total padding, p = 0.5), valid padding,
        # no batch norm, an overlapping 3x3 pool with stride 2
        [conv(3, 4, 2, "same", False), conv(5, 5, 1, "valid", False, {"size": 3, "strides": 2})],
    ],
)
def test_explained_layers_come_from_the_keras_model(blocks):
    from pipeline.core.params import ModelParams
    from pipeline.promotion.export import explained_layers
    from pipeline.training.model import build_model

    params = ModelParams(
        conv_blocks=[{"activation": "relu", "dropout": 0.0, **b} for b in blocks],
        dense=[{"units": 8, "dropout": 0.0}],
        test_time_flip=False,
    )
    rows = explained_layers(build_model(params))
    expected = [r.as_dict() for r in layer_table(28, params.conv_blocks)]
    assert [{k: v for k, v in r.items() if k != "output"} for r in rows] == expected
    # A conv is shown after what follows it (batch norm, activation): what the next layer sees.
    assert [r["output"] for r in rows if r["kind"] == "conv"] == [
        f"act_{i}" for i in range(len(blocks))
    ]
    assert all(r["output"] == r["layer"] for r in rows if r["kind"] == "pool")
