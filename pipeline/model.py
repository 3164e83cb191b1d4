"""Build the Keras CNN described by params `model:` and read back its layer shapes."""

from __future__ import annotations

import keras
from keras import layers

from pipeline.params import IMAGE_SIZE, NUM_CLASSES, ModelParams
from pipeline.preprocess import preprocessing_layers


def build_model(params: ModelParams) -> keras.Sequential:
    """Raw uint8 pixels in; the shared preprocessing, conv blocks (conv [+ batch norm] + activation
    [+ max pool] [+ dropout]), dense layers; class probabilities out.

    Conv and pool layers are named conv_<i> / pool_<i> after their block, matching the layer table.
    """
    pixels = keras.Input((IMAGE_SIZE, IMAGE_SIZE), dtype="uint8", name="pixels")
    stack: list[layers.Layer] = [pixels, *preprocessing_layers()]
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
