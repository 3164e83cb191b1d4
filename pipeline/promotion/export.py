"""The champion in the service's runtime: a saved Keras model exported to ONNX.

Keras 3 exports through tf2onnx. The ONNX graph keeps the model's contract (uint8 pixels
(N, 28, 28) in, probabilities (N, 10) out, any N), so ONNX Runtime serves it without TensorFlow;
`register` checks that it predicts what the Keras model predicts before promoting it.

The explainer (the service's POST /explain and /ui) is a second export of the same model with
more outputs: the output of every conv block (after its batch norm and activation: what the next
layer sees) and every pooling layer, then the probabilities. What the service needs besides it,
and cannot compute without TensorFlow, goes into explainer.json: each of those layers' geometry
(n, f, p, s, output size, channels; read from the saved model's Keras layers, since the champion
may have been trained with other params than today's params.yaml), the first conv layer's learned
filters, and a few test images to try it on.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.architecture import LayerRow, output_size, total_padding
from pipeline.core.fashion_mnist import IMAGE_SIZE, NUM_CLASSES
from pipeline.shared.dataset import Split

if TYPE_CHECKING:
    import keras

EXPLAINER_ONNX = "explainer.onnx"  # file names inside the BentoML model, beside model.onnx
EXPLAINER_JSON = "explainer.json"
EXPLAINER_FORMAT = 1  # explainer.json's layout; the service refuses other values
SAMPLES_PER_CLASS = 2  # test images shipped with the model for the page's "random test image"


@dataclass(frozen=True)
class ExplainerExport:
    """The two explainer files, and the Keras model's own outputs on the shipped samples (the
    reference their ONNX outputs are checked against)."""

    onnx_file: Path
    json_file: Path
    sample_images: np.ndarray
    keras_outputs: list[np.ndarray]


def _export(model: keras.Model, out: Path) -> Path:
    import keras

    spec = keras.InputSpec(dtype="uint8", shape=(None, IMAGE_SIZE, IMAGE_SIZE))
    with warnings.catch_warnings():
        # Keras' tf2onnx shim probes `np.object`, which NumPy 2 warns about: not ours to fix.
        warnings.filterwarnings("ignore", message=".*np.object", category=FutureWarning)
        model.export(str(out), format="onnx", input_signature=[spec], verbose=False)
    return out


def export_onnx(model_file: Path, out: Path) -> Path:
    """Write the ONNX export of a saved .keras model to `out`; returns `out`."""
    import pipeline.training.quiet_tensorflow  # noqa: F401 (TensorFlow without its start-up noise)

    # isort: split
    import keras

    return _export(keras.saving.load_model(model_file, compile=False), out)


def explained_layers(model: keras.Model) -> list[dict[str, Any]]:
    """Every conv and pooling layer in order: its LayerRow (as a dict) plus `output`, the layer
    whose output the page shows (a conv's last following batch norm / activation layer).

    Sizes come from Keras and are checked against floor((n + 2p - f) / s) + 1; ValueError if they
    disagree or a kernel is not square (the table has one f and one s per layer).
    """
    from keras import layers

    after_conv = (layers.BatchNormalization, layers.Activation, layers.ReLU, layers.LeakyReLU)
    after_conv += (layers.ELU, layers.PReLU)
    stack = list(model.layers)
    rows: list[dict[str, Any]] = []
    for i, layer in enumerate(stack):
        if isinstance(layer, layers.Conv2D):
            kind, f, s, tap = "conv", layer.kernel_size, layer.strides, layer
            for following in stack[i + 1 :]:  # the block's output: what the next layer sees
                if not isinstance(following, after_conv):
                    break
                tap = following
        elif isinstance(layer, (layers.MaxPooling2D, layers.AveragePooling2D)):
            kind, f, s, tap = "pool", layer.pool_size, layer.strides, layer
        else:
            continue
        if len(set(f)) != 1 or len(set(s)) != 1:
            raise ValueError(f"{layer.name}: non-square kernel {f} or stride {s}")
        n_in, n_out = int(layer.input.shape[1]), int(layer.output.shape[1])
        if output_size(n_in, f[0], s[0], layer.padding) != n_out:
            raise ValueError(f"{layer.name}: Keras gives {n_out}, the formula does not")
        p = total_padding(n_in, f[0], s[0], layer.padding) / 2
        row = LayerRow(layer.name, kind, n_in, f[0], p, s[0], n_out, int(tap.output.shape[-1]))
        rows.append({**row.as_dict(), "output": tap.name})
    if not rows or rows[0]["kind"] != "conv":
        raise ValueError("the model has no conv layer before its first pooling layer")
    return rows


CHAIN_ACTIVATIONS = ("linear", "relu", "elu", "gelu", "swish", "silu", "tanh")  # the page's g


def activation_chain(net: keras.Model, row: dict[str, Any]) -> dict[str, Any] | None:
    """How the first conv layer's raw output c (the kernels over the input, no bias) becomes the
    feature maps the page shows: z = scale * c + shift per filter, then a = g(z).

    A conv bias b gives shift = b; a batch norm after it (inference mode) folds in as
    scale = gamma / sqrt(moving_variance + epsilon), shift = beta + (b - moving_mean) * scale.
    None when the layers between the conv and its shown output are anything else.
    """
    import keras
    from keras import layers

    def numpy(weights: Any) -> np.ndarray:
        return keras.ops.convert_to_numpy(weights).astype(np.float64)

    stack = list(net.layers)
    conv = net.get_layer(row["layer"])
    following = stack[stack.index(conv) + 1 : stack.index(net.get_layer(row["output"])) + 1]
    if conv.get_config()["activation"] != "linear":
        return None
    scale = np.ones(conv.filters)
    shift = numpy(conv.bias) if conv.use_bias else np.zeros(conv.filters)
    batch_norm, activation = False, "linear"
    for layer in following:
        if (
            isinstance(layer, layers.BatchNormalization)
            and not batch_norm
            and activation == "linear"
        ):
            gamma = numpy(layer.gamma) if layer.scale else 1.0
            beta = numpy(layer.beta) if layer.center else 0.0
            scale = gamma / np.sqrt(numpy(layer.moving_variance) + layer.epsilon)
            shift = beta + (shift - numpy(layer.moving_mean)) * scale
            batch_norm = True
        elif isinstance(layer, layers.Activation) and activation == "linear":
            activation = layer.get_config()["activation"]
        else:
            return None
    if activation not in CHAIN_ACTIVATIONS:
        return None
    return {
        "batch_norm": batch_norm,
        "activation": activation,
        "scale": scale.astype(float).tolist(),
        "shift": shift.astype(float).tolist(),
    }


def sample_indices(labels: np.ndarray, per_class: int = SAMPLES_PER_CLASS) -> np.ndarray:
    """The first `per_class` images of each class, in split order: a fixed, balanced handful."""
    picked = [np.flatnonzero(labels == c)[:per_class] for c in range(NUM_CLASSES)]
    return np.sort(np.concatenate(picked))


def export_explainer(model_file: Path, out_dir: Path, test: Split) -> ExplainerExport:
    """Write explainer.onnx and explainer.json for a saved .keras model into `out_dir`."""
    import pipeline.training.quiet_tensorflow  # noqa: F401 (TensorFlow without its start-up noise)

    # isort: split
    import keras

    from pipeline.training.model import network

    model = keras.saving.load_model(model_file, compile=False)
    net = network(model)  # the layers are the network's (the same with a test-time flip around)
    rows = explained_layers(net)
    maps = keras.Model(net.inputs, [net.get_layer(row["output"]).output for row in rows])
    # The probabilities are the saved model's own (flip-averaged when it has the flip), so
    # /explain answers what /classify answers.
    pixels = keras.Input((IMAGE_SIZE, IMAGE_SIZE), dtype="uint8", name="pixels")
    explainer = keras.Model(pixels, [*maps(pixels), model(pixels)], name="explainer")
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_file = _export(explainer, out_dir / EXPLAINER_ONNX)

    kernel = keras.ops.convert_to_numpy(net.get_layer(rows[0]["layer"]).kernel)  # (f, f, 1, c)
    picked = sample_indices(test.y)
    images = test.x[picked]
    description = {
        "format": EXPLAINER_FORMAT,
        # The ONNX outputs, in order: one per layer row, then the class probabilities.
        "layers": rows,
        "filters": {
            "layer": rows[0]["layer"],
            # The kernels over the model's [0, 1]-scaled grayscale input: (f, f, filters).
            "values": np.round(kernel[:, :, 0, :].astype(float), 6).tolist(),
            # z = scale * (W . a) + shift, a = g(z): what turns the raw convolution into the
            # layer's feature maps (the page works it out for one pixel); null if not that shape.
            "chain": activation_chain(net, rows[0]),
        },
        "samples": [
            {"index": int(i), "label": int(test.y[i]), "pixels": test.x[i].tolist()} for i in picked
        ],
    }
    json_file = out_dir / EXPLAINER_JSON
    json_file.write_text(json.dumps(description, separators=(",", ":")) + "\n")
    reference = [keras.ops.convert_to_numpy(o) for o in explainer(images, training=False)]
    return ExplainerExport(onnx_file, json_file, images, reference)
