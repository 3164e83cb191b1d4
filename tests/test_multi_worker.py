"""train.distribution=multi_worker: two local worker processes (TF_CONFIG on loopback ports); only
the chief logs to MLflow and writes the outputs, the other worker trains and exits cleanly."""

from __future__ import annotations

import json
import shutil
import subprocess

import mlflow
import pandas as pd
import pytest
from conftest import base_env, free_port, set_params
from test_resume import train_command

from pipeline.training.resume import STATE_DIR

pytestmark = pytest.mark.model


def test_two_workers_train_together_and_only_the_chief_logs_and_writes(
    prepared_workspace, mlflow_server, tmp_path
):
    ws = prepared_workspace
    shutil.copy(ws / "params.yaml", tmp_path / "params.yaml")
    set_params(
        tmp_path,
        **{
            "train.distribution": "multi_worker",
            "train.epochs": 2,
            "train.batch_size": 128,  # fewer steps: each one waits for both workers
            "mlflow.experiment_name": "multi-worker-test",
        },
    )
    ports = {free_port(), free_port()}
    while len(ports) < 2:
        ports.add(free_port())
    cluster = {"worker": [f"127.0.0.1:{port}" for port in sorted(ports)]}
    dead_tracking = f"http://127.0.0.1:{free_port()}"  # worker 1 must never need MLflow
    procs = []
    for index, tracking in enumerate([mlflow_server, dead_tracking]):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = base_env(
            TF_CONFIG=json.dumps(tf_config), MLFLOW_TRACKING_URI=tracking, DVC_ROOT=str(tmp_path)
        )
        cmd = train_command(tmp_path / "params.yaml", tmp_path / f"out{index}")
        procs.append(
            subprocess.Popen(
                cmd, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-6000:]
    assert "worker 1: trained 2 epochs; the chief logs the run and writes the outputs" in outputs[1]
    assert not (tmp_path / "out1").exists()
    history = pd.read_csv(tmp_path / "out0" / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    run_id = json.loads((tmp_path / "out0" / "run.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("multi-worker-test")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.params["train.distribution"] == "multi_worker"
    assert list((tmp_path / STATE_DIR).iterdir()) == []
