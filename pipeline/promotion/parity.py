"""Exporting and parity: the checks a candidate's exports must pass before anything is promoted.

Both runtimes (Keras in TensorFlow, the ONNX export in ONNX Runtime, pipeline/core/inference.py)
must reproduce `evaluate`'s predictions on every test image: the same class, with probabilities
within PROBABILITY_TOLERANCE. The explainer export (the per-layer activations behind the service's
/explain and /ui) must give the ONNX model's probabilities on every test image and Keras's
activations on the test images it ships.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.fashion_mnist import CLASS_NAMES
from pipeline.core.inference import OnnxClassifier, in_chunks
from pipeline.promotion.export import ExplainerExport
from pipeline.promotion.record import RegisterError
from pipeline.shared.dataset import Split
from pipeline.shared.keras_runtime import Classifier

# predictions.csv keeps 6 decimals; TensorFlow's graph vs eager differ by ~1e-7, ONNX Runtime's
# kernels from TensorFlow's by ~1e-6.
PROBABILITY_TOLERANCE = 1e-4
# The explainer's activations against Keras's, relative to the layer's largest activation.
ACTIVATION_TOLERANCE = 1e-3


def parity_check(
    model_file: Path, onnx_file: Path, predictions: pd.DataFrame, test: Split
) -> tuple[dict[str, Any], np.ndarray]:
    """Both runtimes on every test image: they must give evaluate's classes and confidences.
    Returns the record and the ONNX export's probabilities (the explainer's reference)."""
    expected = predictions.sort_values("index")
    if (
        len(expected) != len(test)
        or not (expected["actual"].to_numpy() == np.array(CLASS_NAMES)[test.y]).all()
    ):
        raise RegisterError(
            "parity: predictions.csv was evaluated on other test data (labels differ)"
        )
    keras_proba = Classifier.from_file(model_file).predict_proba(test.x)
    onnx_proba = OnnxClassifier(onnx_file).predict_proba(test.x)
    record: dict[str, Any] = {"samples": len(test)}
    for runtime, proba in (("keras", keras_proba), ("onnx", onnx_proba)):
        mismatched = np.flatnonzero(proba.argmax(axis=1) != expected["predicted_id"].to_numpy())
        if mismatched.size:
            raise RegisterError(
                f"parity: {runtime} gives {mismatched.size} of {len(test)} test images another "
                f"class than evaluate did (first: image {int(mismatched[0])})"
            )
        diff = float(np.abs(proba.max(axis=1) - expected["confidence"].to_numpy()).max())
        if diff > PROBABILITY_TOLERANCE:
            raise RegisterError(
                f"parity: {runtime} confidences differ from evaluate's by up to {diff:.2e}"
            )
        record[f"{runtime}_max_confidence_diff"] = diff
    diff = float(np.abs(onnx_proba - keras_proba).max())
    if diff > PROBABILITY_TOLERANCE:
        raise RegisterError(f"parity: ONNX and Keras probabilities differ by up to {diff:.2e}")
    record["onnx_vs_keras_max_probability_diff"] = diff
    return record, onnx_proba


def explainer_parity(
    explainer: ExplainerExport, onnx_proba: np.ndarray, test: Split
) -> dict[str, Any]:
    """The explainer export: the served ONNX model's probabilities (`onnx_proba`, on every test
    image: what the page shows beside the activations is what /classify answers), and Keras's
    activations on the test images it ships."""
    runtime = OnnxClassifier(explainer.onnx_file)
    names = [o.name for o in runtime.session.get_outputs()]
    if len(names) != len(explainer.keras_outputs):
        raise RegisterError(
            f"explainer: {len(names)} ONNX outputs, Keras has {len(explainer.keras_outputs)}"
        )
    proba = in_chunks(
        lambda chunk: runtime.session.run(names[-1:], {runtime.input: chunk})[0], test.x
    )
    diff = float(np.abs(proba - onnx_proba).max())
    if diff > PROBABILITY_TOLERANCE:
        raise RegisterError(f"parity: explainer and model probabilities differ by up to {diff:.2e}")
    worst = 0.0
    got = runtime.session.run(None, {runtime.input: explainer.sample_images})
    for name, ours, theirs in zip(names, got, explainer.keras_outputs, strict=True):
        if ours.shape != theirs.shape:
            raise RegisterError(f"explainer output {name}: {ours.shape}, Keras {theirs.shape}")
        relative = float(np.abs(ours - theirs).max() / max(float(np.abs(theirs).max()), 1e-6))
        if relative > ACTIVATION_TOLERANCE:
            raise RegisterError(
                f"parity: explainer output {name} differs from Keras by {relative:.2e}"
            )
        worst = max(worst, relative)
    return {
        "explainer_vs_onnx_max_probability_diff": diff,
        "explainer_vs_keras_max_relative_activation_diff": worst,
        "explainer_samples": len(explainer.sample_images),
    }
