"""Loading and calling a saved model: the one inference path of evaluate, register and the service.

The saved Keras model is self-contained: uint8 pixels (N, 28, 28) in, class probabilities (N, 10)
out, with the shared preprocessing as its first layers (pipeline/core/preprocess.py). Two runtimes
call it with the same contract (`predict_proba`):
- Classifier (pipeline/shared/keras_runtime.py, not here: the service never imports TensorFlow):
  the Keras model in one compiled TensorFlow graph. evaluate scores with it.
- OnnxClassifier: the same model exported to ONNX (pipeline/promotion/export.py) under ONNX Runtime,
  which the service runs: faster than TensorFlow per call, and no TensorFlow in the service's
  process or image (docs/serving.md, "Serving runtime", has the measurements). `register`
  promotes a model only if both runtimes give the same class on every test image.
Each runtime is imported only when a model is loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.fashion_mnist import IMAGE_SIZE, NUM_CLASSES

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


def altered_files(folder: Path, labels: dict[str, str], metadata: dict[str, Any]) -> list[str]:
    """The files of a stored BentoML model that are missing or not the bytes register recorded
    (model and ONNX export in its labels, explainer files in its metadata): what an interrupted
    copy leaves, and what must never be served."""
    recorded = {
        MODEL_FILE: labels.get("model_sha256"),
        metadata.get("onnx_file", ONNX_FILE): labels.get("onnx_sha256"),
    }
    for key in ("explainer_onnx", "explainer_json"):
        if key in metadata:
            recorded[metadata[key]] = metadata.get(f"{key}_sha256")
    return [
        file
        for file, sha256 in recorded.items()
        if sha256 and (not (folder / file).is_file() or file_sha256(folder / file) != sha256)
    ]


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
