"""What the service reads besides its model: the `serve` section of params.yaml and the model tag.

FASHION_MNIST_PARAMS names another params file; FASHION_MNIST_MODEL pins the served BentoML model
(e.g. `fashion-mnist-cnn:<version>` to roll back); by default it is `<serve.bento_model_name>:latest`,
which `register` keeps equal to the MLflow `@champion` (importing it when it is missing).
FASHION_MNIST_MONITORING_DIR sets where predictions are recorded (serve.monitoring.records_dir).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pipeline.core.params import ServeParams, load_serve_params

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def serve_params() -> ServeParams:
    return load_serve_params(os.environ.get("FASHION_MNIST_PARAMS") or ROOT / "params.yaml")


def model_tag() -> str:
    return os.environ.get("FASHION_MNIST_MODEL") or f"{serve_params().bento_model_name}:latest"


def records_dir() -> Path | None:
    """Where this process records its predictions (service/monitoring.py), resolved against the
    working directory; None when serve.monitoring.records_dir is null and the env does not set it."""
    value = os.environ.get("FASHION_MNIST_MONITORING_DIR") or serve_params().monitoring.records_dir
    return Path(value).resolve() if value else None
