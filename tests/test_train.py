"""Training core on tiny data: determinism, schedules, per-epoch logging, distribution; the train
stage against a dead tracking server. Tracking without a server: tests/test_tracking.py."""

from __future__ import annotations

import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import REPO, base_env, copy_workspace, free_port

from pipeline.core.params import load_params
from pipeline.shared.dataset import Split
from pipeline.training.fit import fit_model, learning_rate

pytestmark = pytest.mark.model

PARAMS = load_params(REPO / "params.yaml")


def tiny(n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10)


def small_params(**train_changes):
    model = PARAMS.model.model_copy(
        update={
            "conv_blocks": [
                b.model_copy(update={"filters": 4}) for b in PARAMS.model.conv_blocks[:2]
            ]
        }
    )
    train = PARAMS.train.model_copy(update={"epochs": 2, "batch_size": 16, **train_changes})
    return model, train


def test_same_seed_same_weights_and_history():
    model_params, train_params = small_params()
    data, val = tiny(64, 0), tiny(20, 1)
    m1, h1 = fit_model(model_params, train_params, data, val, verbose=0)
    m2, h2 = fit_model(model_params, train_params, data, val, verbose=0)
    for w1, w2 in zip(m1.get_weights(), m2.get_weights(), strict=True):
        np.testing.assert_array_equal(w1, w2)
    cols = ["loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]
    assert h1[cols].equals(h2[cols])
    assert list(h1["epoch"]) == [1, 2]
    _, train_other = small_params(seed=7)
    m3, _ = fit_model(model_params, train_other, data, val, verbose=0)
    assert not np.array_equal(m3.get_weights()[0], m1.get_weights()[0])


def test_mirrored_strategy_trains_on_cpu():
    model_params, train_params = small_params(distribution="mirrored", epochs=1)
    model, history = fit_model(model_params, train_params, tiny(32, 0), tiny(10, 1), verbose=0)
    assert np.isfinite(history["loss"]).all()
    assert model.predict(np.zeros((1, 28, 28, 1), np.float32), verbose=0).shape == (1, 10)


def test_cosine_schedule_warms_up_then_decays():
    _, train = small_params(epochs=10, warmup_epochs=2, learning_rate=0.01, lr_schedule="cosine")
    schedule = learning_rate(train, steps_per_epoch=100)
    lr = [float(keras.ops.convert_to_numpy(schedule(step))) for step in (0, 100, 200, 600, 1000)]
    assert lr[0] == pytest.approx(0.001)
    assert lr[1] == pytest.approx(0.0055, rel=1e-3)
    assert lr[2] == pytest.approx(0.01)
    assert lr[3] < lr[2] and lr[4] == pytest.approx(0.0, abs=1e-7)
    _, constant = small_params(lr_schedule="constant")
    assert learning_rate(constant, 100) == constant.learning_rate


def test_train_stage_with_dead_server_fails_in_seconds_and_writes_nothing(tmp_path):
    ws = copy_workspace(tmp_path)
    uri = f"http://127.0.0.1:{free_port()}"
    outputs = [
        "models/model.keras",
        *(f"reports/train/{f}" for f in ("history.csv", "metrics.json", "run.json")),
    ]

    def snapshot() -> dict[str, bytes | None]:
        return {p: (ws / p).read_bytes() if (ws / p).exists() else None for p in outputs}

    before = snapshot()  # the committed baseline's metrics; no model (DVC caches it)
    cmd = [sys.executable, "-m", "pipeline.train"]  # its defaults: dvc.yaml's paths (`outputs`)
    started = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=ws,
        env=base_env(MLFLOW_TRACKING_URI=uri),
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode != 0
    assert f"train failed: MLflow tracking server {uri} is not reachable" in proc.stderr
    assert elapsed < 60, f"took {elapsed:.0f} s (includes importing TensorFlow)"
    assert snapshot() == before
    assert before["models/model.keras"] is None and before["reports/train/metrics.json"]
