"""POST /feedback on the real service: corrections by prediction id or by pixels are stored as
shards next to the records and counted in /metrics; every bad request gets a 4xx and stores
nothing."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from test_monitoring import metric_samples

from pipeline.core.feedback_log import pixels_sha256, read_shards
from pipeline.core.params import load_params
from service.prediction_ids import KEY_FILE, PredictionIds, Receipt

pytest_plugins = ["service_fixtures"]
pytestmark = pytest.mark.service


def shards(workspace: Path) -> list[Path]:
    return sorted((workspace / "monitoring" / "feedback").glob("feedback-*.jsonl"))


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def corrections_counted(url: str, **labels: str) -> float:
    samples = metric_samples(url, "fashion_feedback_corrections")
    return sum(
        s.value for s in samples if s.name.endswith("_total") and labels.items() <= s.labels.items()
    )


def test_corrections_by_id_and_by_pixels_are_stored_whole(service_url, pipeline_run, test_images):
    x, _ = test_images
    answer = requests.post(
        f"{service_url}/classify", files={"image": ("a.png", png(x[0]), "image/png")}, timeout=60
    ).json()
    wrong = (answer["class_id"] + 1) % 10
    agreeing = corrections_counted(service_url, agrees="true")
    before = len(shards(pipeline_run))
    body = {
        "items": [
            {"prediction_id": answer["prediction_id"], "label": wrong},
            {"pixels": x[1].tolist(), "label": answer["class_name"]},
        ],
        "source": "test-suite",
    }
    resp = requests.post(f"{service_url}/feedback", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    stored = resp.json()["stored"]
    assert [s["label"] for s in stored] == [wrong, answer["class_id"]]
    assert stored[0]["predicted"] == answer["class_id"] and stored[0]["agrees"] is False
    assert len(shards(pipeline_run)) == before + 1  # one request, one new shard
    items, bad = read_shards(pipeline_run / "monitoring" / "feedback")
    mine = {i.id: i for i in items}
    first, second = mine[stored[0]["id"]], mine[stored[1]["id"]]
    assert np.array_equal(first.pixels, x[0]) and first.pixels_sha256 == pixels_sha256(x[0])
    assert np.array_equal(second.pixels, x[1]) and first.source == "test-suite"
    assert first.model_version == answer["model"]["version"] and bad == []
    assert first.prediction_id == answer["prediction_id"] and second.prediction_id is None
    agrees = int(stored[1]["agrees"])
    assert corrections_counted(service_url, agrees="true") == agreeing + agrees


def test_every_bad_feedback_gets_a_4xx_naming_it_and_stores_nothing(
    service_url, pipeline_run, test_images
):
    x, _ = test_images
    key = (pipeline_run / "monitoring" / KEY_FILE).read_bytes()
    limits = load_params(pipeline_run / "params.yaml").serve
    old = PredictionIds(key, limits.feedback.id_ttl_hours * 3600).issue(
        Receipt(x[0], "1", 3, 0.9, int(time.time()) - int(limits.feedback.id_ttl_hours * 3600) - 60)
    )
    good = {"pixels": x[0].tolist(), "label": 1}
    cases = [
        ("unknown class", {"items": [{**good, "label": "Sock"}]}, 422, "is not a class"),
        ("class id 10", {"items": [{**good, "label": 10}]}, 422, "is not a class"),
        ("27 rows", {"items": [{"pixels": x[0].tolist()[:27], "label": 1}]}, 400, "28"),
        ("value 300", {"items": [{"pixels": [[300] * 28] * 28, "label": 1}]}, 400, "255"),
        ("neither", {"items": [{"label": 1}]}, 422, "prediction_id or its pixels"),
        ("both", {"items": [{**good, "prediction_id": old}]}, 422, "prediction_id or its pixels"),
        ("forged id", {"items": [{"prediction_id": "A" * 80, "label": 1}]}, 422, "not issued"),
        ("expired id", {"items": [{"prediction_id": old, "label": 1}]}, 410, "expired"),
        ("one bad of two", {"items": [good, {**good, "label": "Sock"}]}, 422, "items[1]"),
        ("no items", {"items": []}, 400, "at least 1"),
        (
            "too many",
            {"items": [good] * (limits.feedback.max_items_per_request + 1)},
            413,
            "max_items_per_request",
        ),
        ("bad source", {"items": [good], "source": "a b"}, 400, "source"),
        ("unknown field", {"items": [{**good, "colour": "red"}]}, 400, "colour"),
    ]
    before = len(shards(pipeline_run))
    for name, body, status, words in cases:
        resp = requests.post(f"{service_url}/feedback", json=body, timeout=60)
        assert resp.status_code == status, (name, resp.text)
        assert words in resp.text, (name, resp.text)
    raw = [
        ("not JSON", {"data": b"{", "headers": {"Content-Type": "application/json"}}, 400),
        ("form", {"data": {"items": "[]"}}, 415),
        (
            "too large",
            {
                "data": b" " * (limits.max_upload_bytes + 1),
                "headers": {"Content-Type": "application/json"},
            },
            413,
        ),
    ]
    for name, kwargs, status in raw:
        resp = requests.post(f"{service_url}/feedback", timeout=60, **kwargs)
        assert resp.status_code == status, (name, resp.text)
    assert requests.get(f"{service_url}/feedback", timeout=60).status_code == 405
    assert len(shards(pipeline_run)) == before, "a refused request stored something"
