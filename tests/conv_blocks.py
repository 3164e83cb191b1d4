"""Conv blocks for the layer table and model tests: tests/test_layer_table.py,
tests/test_architecture.py."""

from __future__ import annotations

from pipeline.core.params import ConvBlock, PoolParams


def conv_block(**settings: object) -> ConvBlock:
    """A 4-filter 3x3 conv + 2/2 max pool block, with the given settings."""
    base = {
        "filters": 4,
        "kernel_size": 3,
        "activation": "relu",
        "pool": PoolParams(size=2, strides=2),
    }
    return ConvBlock(**base, **settings)
