"""Loading and calling a saved model: the one inference path of evaluate, register and the service.

The saved Keras model is self-contained: uint8 pixels (N, 28, 28) in, class probabilities (N, 10)
out, with the shared preprocessing as its first layers (pipeline/preprocess.py). Two runtimes
call it with the same contract (`predict_proba`):
- Classifier: the Keras model in one compiled TensorFlow graph for any batch size (`tf.function`
  with a `None` batch dimension; `model.predict` rebuilds its data pipeline on every call and
  costs about 50 ms for one image). evaluate scores with it.
- OnnxClassifier: the same model exported to ONNX (pipeline/export.py) under ONNX Runtime, which
  the service runs: 1.1-3.5x faster than TensorFlow per call on a 2-core CPU (README, "Serving
  runtime") and no TensorFlow in the service's process or image. `register` promotes a model
  only if both runtimes give the same class on every test image.
Each runtime is imported only when a model is loaded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.params import IMAGE_SIZE, NUM_CLASSES

if TYPE_CHECKING:
    import keras

MODEL_FILE = "model.keras"  # the Keras file's name inside an MLflow or BentoML model directory
ONNX_FILE = "model.onnx"  # its ONNX export, beside it in the BentoML model
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
        return in_chunks(lambda chunk: self._call(chunk).numpy(), images)


class OnnxClassifier:
    """An ONNX export of the model under ONNX Runtime: uint8 (N, 28, 28) -> probabilities (N, 10)."""

    def __init__(self, model_file: str | Path, threads: int | None = None) -> None:
        """threads: ONNX Runtime's intra-op threads (None: its default, one per core)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads would otherwise spin, taking CPU from the HTTP work around the model.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(model_file), options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 (N, 10), in chunks of at most CHUNK images."""
        return in_chunks(lambda chunk: self.session.run(None, {self.input: chunk})[0], images)


def in_chunks(call: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    """call() on checked images, CHUNK at a time (bounds activation memory), rows concatenated."""
    images = check_images(images)
    out = [call(images[i : i + CHUNK]) for i in range(0, len(images), CHUNK)]
    return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES), np.float32)
