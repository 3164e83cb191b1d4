"""Prediction records as the service writes them and `read_records` parses them, made from pixels
and answers, for the tests of the records and of the drift report."""

from __future__ import annotations

import json

import numpy as np

from pipeline.core.fashion_mnist import CLASS_NAMES
from pipeline.core.prediction_log import record_lines

MODEL = "fashion-mnist-cnn:abc"


def records_of(
    pixels: np.ndarray,
    class_ids: np.ndarray,
    model: str = MODEL,
    start: float = 1.8e9,
    endpoint: str = "predict",
) -> list[dict]:
    """One record per image, a second apart from `start`, all answered with confidence 0.9."""
    text = record_lines(
        times=[start + i for i in range(len(pixels))],
        endpoints=[endpoint] * len(pixels),
        inverted=[False] * len(pixels),
        pixels=pixels,
        class_ids=class_ids.tolist(),
        class_names=[CLASS_NAMES[i] for i in class_ids],
        confidences=[0.9] * len(pixels),
        model_version="3",
        bento_model=model,
    )
    return [json.loads(line) for line in text.splitlines()]
