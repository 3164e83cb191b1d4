"""Loading and calling a saved model: the one inference path of evaluate, register and the service.

The saved Keras model is self-contained: uint8 pixels (N, 28, 28) in, class probabilities (N, 10)
out, with the shared preprocessing as its first layers (pipeline/preprocess.py). A Classifier
wraps it in one compiled TensorFlow graph for any batch size (`tf.function` with a `None` batch
dimension): `model.predict` rebuilds its data pipeline on every call and costs about 50 ms for one
image, the compiled call well under 1 ms. TensorFlow is imported only when a model is loaded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.params import IMAGE_SIZE

if TYPE_CHECKING:
    import keras

MODEL_FILE = "model.keras"  # the Keras file's name inside an MLflow or BentoML model directory
CHUNK = 1024  # images per compiled call when scoring a whole split: bounds activation memory


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes: the identity of a model file across DVC, MLflow and BentoML."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def configure_threads(spare_cpus: int = 0, inter_op: int = 1) -> None:
    """Size TensorFlow's thread pools (before it first runs anything; later calls are ignored).

    The intra-op pool gets FASHION_MNIST_TF_THREADS threads, or the CPUs this process may use
    minus `spare_cpus` (at least one).
    """
    import tensorflow as tf

    intra_op = int(
        os.environ.get("FASHION_MNIST_TF_THREADS") or len(os.sched_getaffinity(0)) - spare_cpus
    )
    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, intra_op))
        tf.config.threading.set_inter_op_parallelism_threads(max(1, inter_op))
    except RuntimeError:  # the runtime is already initialised: keep its pools
        pass


def check_images(images: np.ndarray) -> np.ndarray:
    """The model's input contract: uint8 (N, 28, 28); anything else raises ValueError."""
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or images.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 images of shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}), "
            f"got {images.dtype} {images.shape}"
        )
    return images


class Classifier:
    """A Keras classifier behind one compiled call: uint8 (N, 28, 28) -> probabilities (N, 10)."""

    def __init__(self, model: keras.Model) -> None:
        import tensorflow as tf

        self.model = model
        spec = tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE], tf.uint8)
        self._call = tf.function(self._forward, input_signature=[spec], autograph=False)
        self.predict_proba(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE), np.uint8))  # trace once, now

    @classmethod
    def from_file(cls, model_file: str | Path) -> Classifier:
        """Load a saved .keras model (no optimizer state needed to predict)."""
        import keras

        return cls(keras.saving.load_model(Path(model_file), compile=False))

    def _forward(self, x):  # a tf.Tensor in and out
        return self.model(x, training=False)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 (N, 10), in chunks of at most CHUNK images."""
        images = check_images(images)
        out = [self._call(images[i : i + CHUNK]).numpy() for i in range(0, len(images), CHUNK)]
        return np.concatenate(out) if out else np.zeros((0, self.model.output.shape[-1]), "f4")
