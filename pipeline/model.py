"""Build the Keras CNN described by params `model:` and read back its layer shapes."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from pipeline.params import IMAGE_SIZE, NUM_CLASSES, ModelParams
from pipeline.preprocess import to_model_input


def build_model(params: ModelParams) -> keras.Sequential:
    """Conv blocks (conv [+ batch norm] + activation [+ max pool] [+ dropout]), dense layers, softmax.

    Conv and pool layers are named conv_<i> / pool_<i> after their block, matching the layer table.
    """
    stack: list[layers.Layer] = [keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1), name="image")]
    for i, b in enumerate(params.conv_blocks):
        # With batch norm right after, a conv bias is redundant (BN's beta does its job).
        stack.append(
            layers.Conv2D(
                b.filters,
                b.kernel_size,
                strides=b.strides,
                padding=b.padding,
                use_bias=not b.batch_norm,
                name=f"conv_{i}",
            )
        )
        if b.batch_norm:
            # momentum 0.9 (Keras default 0.99): running statistics settle within tens of steps,
            # so short runs (smoke tests, few epochs) also evaluate with sensible statistics.
            stack.append(layers.BatchNormalization(momentum=0.9, name=f"bn_{i}"))
        stack.append(layers.Activation(b.activation, name=f"act_{i}"))
        if b.pool is not None:
            stack.append(layers.MaxPooling2D(b.pool.size, strides=b.pool.strides, name=f"pool_{i}"))
        if b.dropout:
            stack.append(layers.Dropout(b.dropout, name=f"conv_dropout_{i}"))
    stack.append(layers.Flatten(name="flatten"))
    for j, d in enumerate(params.dense):
        stack.append(layers.Dense(d.units, activation="relu", name=f"dense_{j}"))
        if d.dropout:
            stack.append(layers.Dropout(d.dropout, name=f"dropout_{j}"))
    stack.append(layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities"))
    return keras.Sequential(stack, name="fashion_cnn")


def spatial_sizes(model: keras.Model) -> dict[str, int]:
    """Output height of every conv_/pool_ layer, as Keras computed it (name -> size)."""
    return {
        layer.name: layer.output.shape[1]
        for layer in model.layers
        if layer.name.startswith(("conv_", "pool_")) and not layer.name.startswith("conv_dropout")
    }


def predict_proba(model: keras.Model, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities (N, 10) for uint8 images (N, 28, 28), via the shared preprocessing."""
    x = to_model_input(images)
    out = [
        keras.ops.convert_to_numpy(model(x[i : i + batch_size], training=False))
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES), np.float32)
