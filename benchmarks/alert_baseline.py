"""What the alerts' thresholds are set against: the served champion's answers on the validation split.

The answer-quality alerts of deploy/prometheus/alerts.yml compare live traffic with what the model
does on data like its training data: the share of answers below serve.monitoring.low_confidence
(and how often those are right), the largest share one class gets, and the median confidence.
This computes them from the BentoML store's model (its ONNX export, as served: the same function
`make monitor` takes its reference from) on `data/prepared/val.npz`.

    python benchmarks/alert_baseline.py [--model fashion-mnist-cnn:latest]

Writes the `reference` section of benchmarks/results/<date>-<machine>.json; the table in
docs/monitoring.md comes from it (benchmarks/tables.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from harness.models import bento_model
from harness.results import RESULTS_DIR, Measurement
from pipeline.core import paths
from pipeline.core.fashion_mnist import CLASS_NAMES
from pipeline.core.params import load_params
from pipeline.drift import served_model_outputs
from pipeline.shared.dataset import load_split
from pipeline.shared.tracking import tracking_uri


def baseline(
    class_ids: np.ndarray, confidences: np.ndarray, labels: np.ndarray, low: float
) -> dict:
    """The figures the answer-quality alerts are set against, from one model's answers."""
    shares = np.bincount(class_ids, minlength=len(CLASS_NAMES)) / len(class_ids)
    is_low = confidences < low
    return {
        "images": len(class_ids),
        "accuracy": round(float((class_ids == labels).mean()), 4),
        "low_confidence": low,
        "low_confidence_share": round(float(is_low.mean()), 4),
        "low_confidence_accuracy": round(float((class_ids == labels)[is_low].mean()), 4)
        if is_low.any()
        else None,
        "largest_class_share": round(float(shares.max()), 4),
        "largest_class": CLASS_NAMES[int(shares.argmax())],
        "median_confidence": round(float(np.median(confidences)), 4),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a BentoML tag (default: serve.bento_model_name:latest)")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    measurement = Measurement("reference")
    params = load_params(paths.PARAMS)
    tag = args.model or f"{params.serve.bento_model_name}:latest"
    val = load_split(paths.PREPARED / paths.SPLIT_FILES["val"])
    import bentoml

    try:  # `latest` resolved once: the model measured is the model recorded
        model = bento_model(tag, tracking_uri())
    except bentoml.exceptions.NotFound:
        sys.exit(f"no {tag} in the BentoML store: `python -m pipeline.register --import-only`")
    outputs = served_model_outputs(model["name"], val.x)
    figures = baseline(
        outputs.class_ids, outputs.confidences, val.y, params.serve.monitoring.low_confidence
    )
    for key, value in figures.items():
        print(f"{key:>24}: {value}")
    print(f"wrote {measurement.record([model], figures, args.results)}")


if __name__ == "__main__":
    main()
