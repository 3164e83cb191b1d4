"""Fixtures for the register and service tests, on top of conftest's `pipeline_run`, and the
service's HTTP calls they share.

A test module loads them with `pytest_plugins = ["service_fixtures"]`.
`champion` runs the register stage in the pipeline workspace unless `dvc repro` already did;
`service_url` is a real `bentoml serve` of that workspace on a free loopback port.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from conftest import BIN, free_port, run, start_server, stop
from PIL import Image


@pytest.fixture(scope="session")
def champion(pipeline_run: Path, pipeline_env: dict) -> dict:
    """reports/register/champion.json of the pipeline workspace (register run here if dvc did not)."""
    out = pipeline_run / "reports" / "register" / "champion.json"
    if not out.exists():
        run([str(BIN / "python"), "-m", "pipeline.register"], pipeline_run, pipeline_env)
    return json.loads(out.read_text())


@dataclass(frozen=True)
class Served:
    """A running `bentoml serve`: where it answers, its process (for its memory), its log."""

    url: str
    pid: int
    log: Path


@pytest.fixture(scope="session")
def served(
    pipeline_run: Path, pipeline_env: dict, champion: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """`bentoml serve` from the workspace root (bentofile.yaml), serving the champion with the
    default params (two workers)."""
    port = free_port()
    log = tmp_path_factory.mktemp("bentoml_serve") / "serve.log"
    cmd = [str(BIN / "bentoml"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    proc = start_server(cmd, pipeline_run, pipeline_env, log, f"{url}/readyz", 240)
    yield Served(url, proc.pid, log)
    stop(proc)


@pytest.fixture(scope="session")
def service_url(served: Served) -> str:
    """The URL of the session's `bentoml serve` (fixture `served`)."""
    return served.url


@pytest.fixture(scope="session")
def test_images(pipeline_run: Path) -> tuple[np.ndarray, np.ndarray]:
    """The prepared test split: uint8 images (N, 28, 28) and labels."""
    with np.load(pipeline_run / "data" / "prepared" / "test.npz") as data:
        return data["x"], data["y"]


@pytest.fixture(scope="session")
def evaluated(pipeline_run: Path) -> pd.DataFrame:
    """The evaluate stage's per-image predictions, indexed by test image."""
    return pd.read_csv(pipeline_run / "reports" / "eval" / "predictions.csv").set_index("index")


# Requests to a served model, and its answers checked against the evaluate stage's
# (tests/test_service.py, tests/test_bento_build.py).
CONFIDENCE_TOLERANCE = 1e-4


def encode(pixels: np.ndarray | Image.Image, fmt: str, **options: object) -> bytes:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def post_predict(url: str, images: np.ndarray | list, **kw: object) -> requests.Response:
    payload = {"images": images.tolist() if isinstance(images, np.ndarray) else images}
    return requests.post(f"{url}/predict", json=payload, timeout=60, **kw)


def post_image(
    url: str, data: bytes, name: str = "item.png", ctype: str = "image/png", **form: str
):
    return requests.post(
        f"{url}/classify", files={"image": (name, data, ctype)}, data=form, timeout=60
    )


def assert_matches_evaluate(preds: list[dict], evaluated, indices) -> None:
    for pred, i in zip(preds, indices, strict=True):
        assert pred["class_id"] == evaluated.loc[i, "predicted_id"], f"test image {i}"
        assert abs(pred["confidence"] - evaluated.loc[i, "confidence"]) < CONFIDENCE_TOLERANCE
