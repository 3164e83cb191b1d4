"""The saved Keras model under TensorFlow, with the inference contract of pipeline/core/inference.py
(uint8 (N, 28, 28) in, probabilities (N, 10) out): how train, evaluate and register call it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.fashion_mnist import IMAGE_SIZE
from pipeline.core.inference import in_chunks

if TYPE_CHECKING:
    import keras


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


class Classifier:
    """A Keras classifier behind one compiled call: uint8 (N, 28, 28) -> probabilities (N, 10).

    One `tf.function` with a `None` batch dimension serves any batch size; `model.predict`
    rebuilds its data pipeline on every call and costs about 50 ms for one image.
    """

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
        return in_chunks(lambda chunk: self._call(chunk).numpy(), images)
