"""The service's prediction records on tiny arrays: image features, records read back by time
window, the recorder's own file, its queue and its failures, and monitoring switched off."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import REGISTRY
from record_factory import records_of

from pipeline.core.prediction_log import (
    FIELDS,
    format_time,
    image_features,
    read_records,
)
from pipeline.core.record_files import RecordLimits

pytestmark = pytest.mark.unit

ROOMY = RecordLimits(max_bytes=10**9, retention_seconds=86_400, part_bytes=10**8)
UTC = dt.UTC


def tall_bar() -> np.ndarray:
    image = np.zeros((28, 28), np.uint8)
    image[2:26, 12:16] = 200  # 24 rows x 4 columns
    return image


def test_image_features_describe_brightness_and_shape():
    bar = tall_bar()
    f = image_features(np.stack([np.zeros_like(bar), bar, np.rot90(bar), 255 - bar]))
    assert f["pixel_mean"][0] == f["pixel_std"][0] == f["log2_aspect"][0] == 0  # blank
    assert f["bright_fraction"][1] == pytest.approx(24 * 4 / 784)
    assert f["log2_aspect"][1] > 2  # 24 rows tall, 4 columns wide
    assert f["log2_aspect"][2] == pytest.approx(-f["log2_aspect"][1])  # rotated: as wide
    assert f["pixel_mean"][3] == pytest.approx(255 - f["pixel_mean"][1])  # inverted
    assert f["pixel_std"][3] == pytest.approx(f["pixel_std"][1])  # ... same contrast


def test_records_are_read_back_by_window(tmp_path):
    pixels = np.stack([tall_bar()] * 4)
    start = dt.datetime(2026, 11, 26, 23, 59, 58, tzinfo=UTC).timestamp()
    records = records_of(pixels, np.array([1, 1, 3, 9]), start=start)
    assert list(records[0]) == list(FIELDS)
    assert records[0]["time"] == "2026-11-26T23:59:58.000Z"
    lines = [json.dumps(r) for r in records]
    (tmp_path / "predictions-2026-11-26-host-1.jsonl").write_text("\n".join(lines[:2]) + "\n")
    # the next day's file of another process, with a line cut short by a crash
    (tmp_path / "predictions-2026-11-27-host-2.jsonl").write_text(
        "\n".join(lines[2:]) + '\n{"time": "2026-11-2'
    )
    t = dt.datetime.fromtimestamp
    everything, bad = read_records(tmp_path, t(start - 1, UTC), t(start + 10, UTC))
    assert [r["class_id"] for r in everything] == [1, 1, 3, 9] and bad == 1
    window, _ = read_records(tmp_path, t(start + 1, UTC), t(start + 3, UTC))
    assert [r["time"] for r in window] == [format_time(start + 1), format_time(start + 2)]
    assert read_records(tmp_path, t(start + 86400 * 3, UTC), t(start + 86400 * 4, UTC))[0] == []


def test_recorder_writes_its_own_file_and_drops_rather_than_block(tmp_path):
    from service.monitoring import PredictionRecorder

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    low = value("fashion_low_confidence_predictions_total", endpoint="predict")
    dropped = value("fashion_prediction_records_dropped_total", reason="queue_full")
    trousers = value("fashion_predictions_total", class_name="Trouser", endpoint="predict")
    recorder = PredictionRecorder(
        tmp_path, "3", "m:1", 0.5, queue_size=2, limits=ROOMY, flush_seconds=3600
    )
    answers = [SimpleNamespace(class_id=1, class_name="Trouser", confidence=c) for c in (0.4, 0.9)]
    two = np.stack([tall_bar(), 255 - tall_bar()])
    recorder.record("predict", two, answers)
    recorder.record("predict", two[:1], answers[:1])
    recorder.record("predict", two, answers)  # the queue holds 2 requests: dropped, counted
    recorder.close()  # writes what was queued
    (path,) = tmp_path.iterdir()
    assert path.name.endswith(f"-{os.getpid()}.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["confidence"] for r in lines] == [0.4, 0.9, 0.4]
    assert lines[1]["pixel_mean"] == pytest.approx(255 - lines[0]["pixel_mean"], abs=0.01)
    assert value("fashion_prediction_records_dropped_total", reason="queue_full") == dropped + 2
    assert value("fashion_low_confidence_predictions_total", endpoint="predict") == low + 2
    assert (
        value("fashion_predictions_total", class_name="Trouser", endpoint="predict") == trousers + 3
    )


def test_monitoring_disabled_records_and_counts_nothing(tmp_path, monkeypatch):
    import yaml

    from service import monitoring, settings

    raw = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    raw["serve"]["monitoring"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("FASHION_MNIST_PARAMS", str(tmp_path / "params.yaml"))
    monkeypatch.setenv("FASHION_MNIST_MONITORING_DIR", str(tmp_path / "records"))
    settings.serve_params.cache_clear()
    try:
        recorder = monitoring.recorder("3", "m:1")
        labels = {"class_name": "Trouser", "endpoint": "predict"}
        before = REGISTRY.get_sample_value("fashion_predictions_total", labels) or 0.0
        answer = SimpleNamespace(class_id=1, class_name="Trouser", confidence=0.9)
        recorder.record("predict", tall_bar()[None], [answer])
        assert isinstance(recorder, monitoring.NoRecorder)
        assert not (tmp_path / "records").exists()
        assert (REGISTRY.get_sample_value("fashion_predictions_total", labels) or 0.0) == before
    finally:
        settings.serve_params.cache_clear()


def test_recorder_survives_an_unwritable_directory(tmp_path):
    from service.monitoring import PredictionRecorder

    (tmp_path / "file").write_text("not a directory")
    recorder = PredictionRecorder(tmp_path / "file" / "records", "3", "m:1", 0.5, 10, ROOMY, 3600)
    before = REGISTRY.get_sample_value(
        "fashion_prediction_records_dropped_total", {"reason": "write_error"}
    )
    answer = SimpleNamespace(class_id=1, class_name="Trouser", confidence=0.9)
    recorder.record("predict", tall_bar()[None], [answer])
    recorder.flush()
    assert recorder._thread.is_alive()
    recorder.close()
    after = REGISTRY.get_sample_value(
        "fashion_prediction_records_dropped_total", {"reason": "write_error"}
    )
    assert after == (before or 0) + 1
