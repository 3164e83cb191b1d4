"""What the service reads besides its model: the `serve` section of params.yaml and the model tag.

FASHION_MNIST_PARAMS names another params file; FASHION_MNIST_MODEL pins the served BentoML model
(e.g. `fashion-mnist-cnn:<version>` to roll back); by default it is `<serve.bento_model_name>:latest`,
which `register` keeps equal to the MLflow `@champion` (importing it when it is missing).
FASHION_MNIST_MONITORING_DIR sets where predictions are recorded (serve.monitoring.records_dir).
FASHION_MNIST_WORKERS overrides serve.workers; FASHION_MNIST_CPUS says how many CPUs the service
may use (default: those this process may run on). On Kubernetes the Deployment sets the CPUs from
the pod's CPU request and the workers to `cpu_count` (deploy/k8s/deployment.yaml), so a pod runs
one worker per requested CPU, whatever the node's size.
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


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{name}={value!r}: expected a whole number of at least 1")
    return number


def cpus() -> int:
    """The CPUs the service shares out between its workers: FASHION_MNIST_CPUS (on Kubernetes,
    the pod's CPU request, rounded up), else the CPUs this process may run on. The node's CPU
    count would oversubscribe a pod whose request is a slice of a big node."""
    if value := os.environ.get("FASHION_MNIST_CPUS"):
        return _positive_int("FASHION_MNIST_CPUS", value)
    return len(os.sched_getaffinity(0))


def workers() -> int:
    """Worker processes: FASHION_MNIST_WORKERS, else serve.workers; `cpu_count` is one per CPU
    of `cpus()`."""
    value = os.environ.get("FASHION_MNIST_WORKERS") or str(serve_params().workers)
    return cpus() if value == "cpu_count" else _positive_int("FASHION_MNIST_WORKERS", value)


def records_dir() -> Path | None:
    """Where this process records its predictions (service/monitoring.py), resolved against the
    working directory; None when serve.monitoring.records_dir is null and the env does not set it."""
    value = os.environ.get("FASHION_MNIST_MONITORING_DIR") or serve_params().monitoring.records_dir
    return Path(value).resolve() if value else None
