"""How the served model is loaded and called: one place, used by the service and by `register`.

`register` checks a candidate with exactly this code before promoting it, so what passed the
parity check is what the service runs. Inference is one compiled TensorFlow graph for any batch
size (`tf.function` with a `None` batch dimension): `model.predict` rebuilds its data pipeline on
every call and costs about 50 ms for one image, the compiled call well under 1 ms.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.params import IMAGE_SIZE
from pipeline.preprocess import to_model_input

MODEL_FILE = "model.keras"  # the Keras file inside a BentoML model's directory


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
    """A saved Keras classifier behind one compiled call: uint8 (N, 28, 28) -> probabilities (N, 10)."""

    def __init__(self, model_file: str | Path) -> None:
        import keras
        import tensorflow as tf

        self.model = keras.saving.load_model(Path(model_file), compile=False)
        spec = tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 1], tf.float32)
        self._call = tf.function(self._forward, input_signature=[spec], autograph=False)
        self.predict_proba(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE), np.uint8))  # trace once, now

    def _forward(self, x):  # a tf.Tensor in and out
        return self.model(x, training=False)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 (N, 10), through the shared preprocessing."""
        return self._call(to_model_input(images)).numpy()
