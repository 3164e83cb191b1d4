"""Feedback as versioned data: each curated dataset is a DVC version that `dvc status`, `dvc diff`
and `dvc metrics diff` show and `dvc checkout` brings back; `evaluate` scores the feedback slice
and logs it to MLflow."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import BIN, base_env, copy_workspace, run, set_params
from mlflow import MlflowClient

from pipeline.core.feedback_log import Correction, pixels_sha256, shard_name, write_shard
from pipeline.core.inference import file_sha256
from pipeline.shared.dataset import (
    Split,
    content_hash,
    load_corrections,
    load_split,
    save_arrays,
)

pytestmark = pytest.mark.e2e

DVC = str(BIN / "dvc")
T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


def corrections(seed: int, n: int) -> list[Correction]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
        items.append(
            Correction(
                id=uuid.uuid4().hex,
                time=T0 + dt.timedelta(hours=seed, minutes=i),
                model_version="1",
                bento_model="fashion-mnist-cnn:abc",
                prediction_id=None,
                predicted=(i + 1) % 10,
                confidence=0.5,
                label=i % 10,
                source="page",
                pixels_sha256=pixels_sha256(pixels),
                pixels=pixels,
            )
        )
    return items


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def git(ws: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test", *args]
    return run(cmd, ws, base_env()).stdout.strip()


def test_each_curated_dataset_is_a_dvc_version_that_checkout_brings_back(tmp_path):
    ws = copy_workspace(tmp_path / "ws")
    set_params(
        ws,
        **{
            "prepare.max_train_samples": 2000,
            "prepare.max_test_samples": 2000,
            "feedback.review": "auto",
        },
    )
    records = tmp_path / "records"
    env = base_env(FASHION_MNIST_MONITORING_DIR=str(records))
    write_shard(records / "feedback", shard_name(T0, "pod", 1, 0), corrections(1, 6))
    run([DVC, "repro", "prepare"], ws, env)
    first = {
        "corrections": md5(ws / "data/feedback/corrections.npz"),
        "slice": md5(ws / "data/prepared/feedback.npz"),
        "train": md5(ws / "data/prepared/train.npz"),
    }
    assert len(load_corrections(ws / "data/feedback/corrections.npz")) == 6
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "feedback v1")
    v1 = git(ws, "rev-parse", "HEAD")

    # New corrections arrive: the stage (always run) picks them up, and DVC shows what changed.
    later = T0 + dt.timedelta(days=1)
    shard2 = write_shard(records / "feedback", shard_name(later, "pod", 1, 1), corrections(2, 4))
    assert "feedback:\n\talways changed" in run([DVC, "status", "feedback"], ws, env).stdout
    run([DVC, "repro", "feedback"], ws, env)
    status = run([DVC, "status", "prepare"], ws, env).stdout
    assert "modified:           data/feedback/corrections.npz" in status, status
    diff = json.loads(run([DVC, "diff", "--json"], ws, env).stdout)
    assert {e["path"] for e in diff["added"]} >= {f"data/feedback/shards/{shard2.name}"}
    assert {e["path"] for e in diff["modified"]} >= {"data/feedback/corrections.npz"}
    metrics = json.loads(run([DVC, "metrics", "diff", "--json"], ws, env).stdout)
    assert metrics["reports/feedback/report.json"]["accepted_images"] == {
        "old": 6,
        "new": 10,
        "diff": 4,
    }
    assert metrics["reports/feedback/report.json"]["outcomes.accepted"]["new"] == 10
    run([DVC, "repro", "prepare"], ws, env)
    mixed = json.loads(run([DVC, "metrics", "diff", "--json"], ws, env).stdout)
    assert mixed["reports/data/feedback.json"]["corrections"] == {"old": 6, "new": 10, "diff": 4}
    second = md5(ws / "data/feedback/corrections.npz")
    assert second != first["corrections"]
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "feedback v2")
    v2 = git(ws, "rev-parse", "HEAD")

    # The older commit's dataset comes back, archive and all, and the newer one after it.
    git(ws, "checkout", "-q", v1)
    run([DVC, "checkout", "feedback", "prepare"], ws, env)
    assert md5(ws / "data/feedback/corrections.npz") == first["corrections"]
    assert md5(ws / "data/prepared/feedback.npz") == first["slice"]
    assert md5(ws / "data/prepared/train.npz") == first["train"]
    assert len(list((ws / "data/feedback/shards").iterdir())) == 1
    git(ws, "checkout", "-q", v2)
    run([DVC, "checkout", "feedback", "prepare"], ws, env)
    assert md5(ws / "data/feedback/corrections.npz") == second
    assert len(load_corrections(ws / "data/feedback/corrections.npz")) == 10


def test_evaluate_reports_the_feedback_slice_empty_and_scored(
    pipeline_run, pipeline_env, mlflow_server, tmp_path
):
    # The suite's pipeline run had no corrections: no accuracy (null), no samples, no input.
    metrics = json.loads((pipeline_run / "reports/eval/metrics.json").read_text())
    assert metrics["feedback_samples"] == 0 and metrics["feedback_accuracy"] is None
    client = MlflowClient(tracking_uri=mlflow_server)
    run_id = json.loads((pipeline_run / "reports/train/run.json").read_text())["mlflow_run_id"]
    logged = client.get_run(run_id)
    assert logged.data.metrics["feedback_samples"] == 0
    assert "feedback_accuracy" not in logged.data.metrics
    contexts = {
        t.value
        for d in logged.inputs.dataset_inputs
        for t in d.tags
        if t.key == "mlflow.data.context"
    }
    assert "feedback" not in contexts

    # A slice of 40 test images: evaluate's accuracy on it must match its own predictions on them.
    # Scored in a run of its own experiment, so the suite's run stays as the pipeline left it.
    data = tmp_path / "data"
    data.mkdir()
    test = load_split(pipeline_run / "data/prepared/test.npz")
    (data / "test.npz").write_bytes((pipeline_run / "data/prepared/test.npz").read_bytes())
    picked = Split(test.x[:40], test.y[:40])
    hashes = np.array([pixels_sha256(x) for x in picked.x])
    save_arrays(
        data / "feedback.npz",
        {
            "x": picked.x,
            "y": picked.y,
            "sha256": hashes,
            "dataset_digest": np.array("d" * 64),
            "train_images": np.array(7),
        },
    )
    params = yaml.safe_load((pipeline_run / "params.yaml").read_text())
    params["mlflow"]["experiment_name"] = f"feedback-eval-{uuid.uuid4().hex[:8]}"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    model = pipeline_run / "models/model.keras"
    experiment = client.create_experiment(params["mlflow"]["experiment_name"])
    fresh = client.create_run(experiment, tags={"model_sha256": file_sha256(model)}).info.run_id
    (tmp_path / "run.json").write_text(json.dumps({"mlflow_run_id": fresh}))
    out = tmp_path / "eval"
    cmd = [str(BIN / "python"), "-m", "pipeline.evaluate"]
    cmd += ["--params", str(tmp_path / "params.yaml"), "--model", str(model), "--data", str(data)]
    cmd += ["--sources", str(pipeline_run / "data/raw/sources.json")]
    cmd += ["--run", str(tmp_path / "run.json"), "--out", str(out)]
    run(cmd, pipeline_run, pipeline_env)
    scored = json.loads((out / "metrics.json").read_text())
    predicted = np.loadtxt(out / "predictions.csv", delimiter=",", skiprows=1, usecols=3, dtype=int)
    expected = float((predicted[:40] == picked.y).mean())
    assert scored["feedback_samples"] == 40
    assert scored["feedback_accuracy"] == pytest.approx(expected)
    assert scored["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    tracked = client.get_run(fresh)
    assert tracked.data.metrics["feedback_accuracy"] == pytest.approx(expected)
    assert tracked.data.metrics["feedback_samples"] == 40
    inputs = {
        {t.key: t.value for t in d.tags}["mlflow.data.context"]: d
        for d in tracked.inputs.dataset_inputs
    }
    feedback = inputs["feedback"]
    assert feedback.dataset.name == "fashion-mnist-feedback"
    assert feedback.dataset.digest == content_hash(picked)[: len(feedback.dataset.digest)]
    tags = {t.key: t.value for t in feedback.tags}
    assert tags["feedback_dataset_digest"] == "d" * 64
    assert tags["feedback_train_images"] == "7" and tags["feedback_slice_images"] == "40"
    assert "test" in inputs  # beside the original data
