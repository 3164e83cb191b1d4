"""Build the Keras CNN described by params `model:` and read back its layer shapes.

Training fits the network (`build_model`). With `model.test_time_flip` the saved model wraps it
(`with_test_time_flip`): the same weights applied to each image and to its mirror image, the two
answers averaged. Everything that looks inside a saved model goes through `network()`.
"""

from __future__ import annotations

import keras
from keras import layers

from pipeline.core.fashion_mnist import IMAGE_SIZE, NUM_CLASSES
from pipeline.core.params import ModelParams

NETWORK_NAME = "fashion_cnn"


def preprocessing_layers() -> list[keras.layers.Layer]:
    """uint8 pixels (N, 28, 28) -> float32 (N, 28, 28, 1) in [0, 1]: the model's first layers."""
    return [
        layers.Rescaling(1 / 255, name="scale"),
        layers.Reshape((IMAGE_SIZE, IMAGE_SIZE, 1), name="add_channel"),
    ]


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
    return keras.Sequential(stack, name=NETWORK_NAME)


def with_test_time_flip(network: keras.Model) -> keras.Model:
    """The model to save when model.test_time_flip: uint8 pixels in, the average of the network's
    probabilities for each image and for its left-right mirror image out.

    A clothing item and its mirror image are the same class, and the network has seen both
    (horizontal flips are a training augmentation), so the two answers' errors partly cancel.
    No weights of its own: training cost is unchanged, inference costs two forward passes. Only
    built-in Keras operations, so the saved file loads anywhere Keras does (plain mlflow.pyfunc).
    """
    pixels = keras.Input((IMAGE_SIZE, IMAGE_SIZE), dtype="uint8", name="pixels")
    mirrored = keras.ops.flip(pixels, axis=2)  # (N, rows, columns): reverse the columns, exactly
    both = [network(pixels), network(mirrored)]
    return keras.Model(pixels, layers.Average(name="flip_average")(both), name="fashion_cnn_tta")


def network(model: keras.Model) -> keras.Model:
    """The CNN of a saved model: the model itself, or the network inside its test-time flip."""
    for layer in model.layers:
        if isinstance(layer, keras.Sequential) and layer.name == NETWORK_NAME:
            return layer
    return model


def spatial_sizes(model: keras.Model) -> dict[str, int]:
    """Output height of every conv_/pool_ layer, as Keras computed it (name -> size)."""
    return {
        layer.name: layer.output.shape[1]
        for layer in network(model).layers
        if layer.name.startswith(("conv_", "pool_")) and not layer.name.startswith("conv_dropout")
    }
