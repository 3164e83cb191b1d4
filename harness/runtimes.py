"""The model's ceiling in this process, per runtime it can run in (TensorFlow `tf.function`,
ONNX Runtime, LiteRT when installed): images per second at batch 1, 8, 32 and 128 and with batch
sizes mixed, and how each agrees with TensorFlow (benchmarks/serve_benchmark.py)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

BATCHES = (1, 8, 32, 128)
MIXED = (1, 3, 2, 4)  # batch sizes in turn, as concurrent requests arrive


def runtimes(model_file: Path, onnx_file: Path, workdir: Path) -> dict:
    """predict_proba of each runtime that can run here, on the same model."""
    from pipeline.core.inference import OnnxClassifier
    from pipeline.shared.keras_runtime import Classifier, configure_threads

    configure_threads()
    found = {
        "tensorflow": Classifier.from_file(model_file).predict_proba,
        "onnxruntime": OnnxClassifier(onnx_file).predict_proba,
        "onnxruntime, 1 thread": OnnxClassifier(onnx_file, threads=1).predict_proba,
    }
    try:
        found["litert"] = litert(model_file, workdir, len(os.sched_getaffinity(0)))
        found["litert, 1 thread"] = litert(model_file, workdir, 1)
    except ImportError as err:
        logging.getLogger(__name__).warning("LiteRT not measured: %s", err)
    return found


def litert(model_file: Path, workdir: Path, threads: int):
    """The Keras model converted to LiteRT (TFLite, XNNPACK delegate), one interpreter."""
    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    path = workdir / "model.tflite"
    if not path.exists():
        model = keras.saving.load_model(model_file, compile=False)
        path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    interpreter = Interpreter(str(path), num_threads=threads)
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    shape: list[int] = []

    def predict_proba(images: np.ndarray) -> np.ndarray:
        if shape != [len(images)]:
            interpreter.resize_tensor_input(inp, [len(images), 28, 28])
            interpreter.allocate_tensors()
            shape[:] = [len(images)]
        interpreter.set_tensor(inp, images)
        interpreter.invoke()
        return interpreter.get_tensor(out).copy()

    return predict_proba


def ceilings(found: dict, seconds: float, images: np.ndarray) -> dict:
    """Images/s of each runtime on repeated full batches, and parity with TensorFlow."""
    images = np.resize(images, (1024, 28, 28))
    reference = found["tensorflow"](images[:512])
    result = {}
    for name, predict in found.items():
        proba = np.concatenate([predict(images[i : i + 128]) for i in range(0, 512, 128)])
        row = {
            "class_mismatches_vs_tensorflow": int((proba.argmax(1) != reference.argmax(1)).sum()),
            "max_probability_diff_vs_tensorflow": float(np.abs(proba - reference).max()),
        }
        for batch in BATCHES:
            predict(images[:batch])
            n, calls, began = 0, 0, time.perf_counter()
            while time.perf_counter() - began < seconds:
                predict(images[(calls * batch) % 896 :][:batch])
                n, calls = n + batch, calls + 1
            elapsed = time.perf_counter() - began
            row[f"batch_{batch}"] = {
                "images_per_s": n / elapsed,
                "ms_per_call": 1e3 * elapsed / calls,
            }
        # What a server sees: every call another small size (LiteRT re-plans its tensors then).
        n, calls, began = 0, 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            size = MIXED[calls % len(MIXED)]
            predict(images[calls % 896 :][:size])
            n, calls = n + size, calls + 1
        elapsed = time.perf_counter() - began
        row["mixed"] = {"images_per_s": n / elapsed, "ms_per_call": 1e3 * elapsed / calls}
        result[name] = row
    return result
