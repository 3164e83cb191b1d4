"""The train stage fine-tuning the MLflow @champion (`train.init: champion`), for real: it starts
from the champion's weights and says so in MLflow and in run.json.

The champion is the pipeline run's (conftest's `pipeline_run`, promoted by its register); the
training runs on the same small prepared data (`prepared_workspace`) for one epoch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid

import mlflow
import pandas as pd
import pytest
from conftest import base_env, set_params

pytest_plugins = ["service_fixtures"]  # champion
pytestmark = pytest.mark.e2e


def test_fine_tuning_starts_from_the_champion_and_says_so(
    champion, pipeline_run, prepared_workspace, mlflow_server, tmp_path
):
    ws = prepared_workspace
    shutil.copy(ws / "params.yaml", tmp_path / "params.yaml")
    experiment = f"fine-tune-{uuid.uuid4().hex[:8]}"
    set_params(
        tmp_path,
        **{
            "mlflow.experiment_name": experiment,
            "mlflow.registered_model_name": champion["champion"]["model_name"],
            "train.init": "champion",
            "train.fine_tune.epochs": 1,
            "train.fine_tune.learning_rate": 0.0002,
        },
    )
    out = tmp_path / "out"
    # The prepared data and sources at their defaults (dvc.yaml's paths); the outputs in `out`.
    cmd = [sys.executable, "-m", "pipeline.train", "--params", str(tmp_path / "params.yaml")]
    cmd += ["--model", str(out / "model.keras"), "--history", str(out / "history.csv")]
    cmd += ["--metrics", str(out / "metrics.json"), "--run", str(out / "run.json")]
    env = base_env(MLFLOW_TRACKING_URI=mlflow_server, DVC_ROOT=str(tmp_path))  # state: tmp_path
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    started = champion["champion"]
    record = json.loads((out / "run.json").read_text())
    assert record["init"] == {
        "from": "champion",
        "model_name": started["model_name"],
        "model_version": started["version"],
        "run_id": started["run_id"],
        "model_sha256": started["model_sha256"],
    }
    assert f"fine-tuning {started['model_name']} v{started['version']}" in proc.stdout
    assert "1 epochs from learning rate 0.0002" in proc.stdout
    # Before its first step, the model is the champion: the validation accuracy of its starting
    # weights is the one the champion's run recorded on this same split.
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["init_val_accuracy"] == started["val_accuracy"]
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == [1]  # fine_tune.epochs
    run = mlflow.MlflowClient(mlflow_server).get_run(record["mlflow_run_id"])
    assert run.data.tags["init"] == "champion"
    assert run.data.tags["init_model_version"] == started["version"]
    assert run.data.tags["init_run_id"] == started["run_id"]
    assert run.data.params["train.init"] == "champion"
    assert run.data.params["train.fine_tune.learning_rate"] == "0.0002"
    assert run.data.metrics["init_val_accuracy"] == started["val_accuracy"]
    assert run.data.tags["val_data_hash"] == started["val_data_hash"]
    # From scratch (the pipeline's own run, the default params), none of it.
    scratch = pipeline_run / "reports" / "train"
    assert "init" not in json.loads((scratch / "run.json").read_text())
    assert not [k for k in json.loads((scratch / "metrics.json").read_text()) if "init" in k]
