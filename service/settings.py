"""Where the service's settings come from: params.yaml (beside service/, also inside a Bento).

FASHION_MNIST_PARAMS overrides the params file; FASHION_MNIST_MODEL pins the served BentoML model
(e.g. `fashion-mnist-cnn:<version>` to roll back); by default it is `<register.bento_model_name>:latest`,
which is the champion because `register` adds a model to the store only when it promotes one.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pipeline.params import Params, load_params

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def params() -> Params:
    return load_params(os.environ.get("FASHION_MNIST_PARAMS") or ROOT / "params.yaml")


def model_tag() -> str:
    return os.environ.get("FASHION_MNIST_MODEL") or f"{params().register.bento_model_name}:latest"
