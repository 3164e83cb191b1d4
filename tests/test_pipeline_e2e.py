"""The real pipeline: `dvc repro` in a workspace copy, tracked by a real `mlflow server`."""

from __future__ import annotations

import json
import sqlite3

import mlflow
import numpy as np
import pytest
from conftest import BIN, SMALL_RUN, base_env, copy_workspace, run, set_params
from mlflow.tracking import MlflowClient

from pipeline.dataset import load_split

pytestmark = pytest.mark.e2e

DVC = str(BIN / "dvc")


def test_repro_prepare_then_nothing_to_do(tmp_path):
    ws = copy_workspace(tmp_path)
    set_params(ws, **{"prepare.max_train_samples": 500})
    env = base_env()
    first = run([DVC, "repro", "prepare"], ws, env)
    assert "Running stage 'fetch'" in first.stdout and "Running stage 'prepare'" in first.stdout
    sizes = {
        s: len(load_split(ws / "data" / "prepared" / f"{s}.npz")) for s in ("train", "val", "test")
    }
    assert sizes == {"train": 450, "val": 50, "test": 10_000}
    report = json.loads((ws / "reports" / "data" / "report.json").read_text())
    assert report["splits"]["val"]["class_counts"]["Bag"] == 5
    assert (ws / "reports" / "data" / "report.csv").read_text().startswith("class,train,val,test")
    assert len(list((ws / "data" / "raw").iterdir())) == 4
    second = run([DVC, "repro", "prepare"], ws, env)
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout


@pytest.fixture(scope="module")
def tracked_run(pipeline_run, mlflow_server):
    client = MlflowClient(tracking_uri=mlflow_server)
    run_id = json.loads((pipeline_run / "models" / "run.json").read_text())["run_id"]
    return client, client.get_run(run_id)


def test_run_holds_params_tags_and_per_epoch_metrics(pipeline_run, tracked_run):
    client, tracked = tracked_run
    params = tracked.data.params
    assert params["train.epochs"] == str(SMALL_RUN["train.epochs"])
    assert params["model.conv_blocks.0.filters"] == "32"
    assert params["data.train_samples"] == "1800"
    head = run(["git", "rev-parse", "HEAD"], pipeline_run, base_env()).stdout.strip()
    tags = tracked.data.tags
    assert tags["git_commit"] == head
    assert tags["seed"] == "42"
    assert len(tags["data_hash"]) == 64
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        history = client.get_metric_history(tracked.info.run_id, metric)
        assert [m.step for m in history] == [1, 2], metric
    assert 0.5 < tracked.data.metrics["test_accuracy"] <= 1.0


def test_logged_model_loads_and_predicts_probabilities(pipeline_run, tracked_run, mlflow_server):
    _, tracked = tracked_run
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.keras.load_model(f"runs:/{tracked.info.run_id}/model")
    test = load_split(pipeline_run / "data" / "prepared" / "test.npz")
    from pipeline.model import predict_proba

    proba = predict_proba(model, test.x[:16])
    assert proba.shape == (16, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_evaluation_artifacts_logged_and_dvc_metrics(pipeline_run, tracked_run):
    client, tracked = tracked_run
    names = {a.path for a in client.list_artifacts(tracked.info.run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/confusion.csv", "evaluation/layers.csv"} <= names
    figures = {a.path for a in client.list_artifacts(tracked.info.run_id, "evaluation/figures")}
    assert "evaluation/figures/feature_maps.png" in figures
    assert "evaluation/figures/conv_filters.png" in figures
    metrics = json.loads((pipeline_run / "reports" / "eval" / "metrics.json").read_text())
    shown = run([DVC, "metrics", "show"], pipeline_run, base_env()).stdout
    assert "test_accuracy" in shown
    assert f"{metrics['test_accuracy']:g}"[:5] in shown
    layers = (pipeline_run / "reports" / "eval" / "layers.csv").read_text().splitlines()
    assert layers[0] == "layer,kind,n_in,f,p,s,n_out,channels,keras_out"
    assert layers[1].startswith("conv_0,conv,28,3,1.0,1,28,32,28")


def test_second_repro_does_nothing(pipeline_run, pipeline_env):
    out = run([DVC, "repro"], pipeline_run, pipeline_env).stdout
    assert "Running stage" not in out


def test_exp_run_in_temp_copy_tracks_to_repo_sqlite(pipeline_run):
    """`dvc exp run --temp` runs in a throwaway copy; runs must still land in <repo>/mlflow.db."""
    env = base_env()  # no MLFLOW_TRACKING_URI: the default sqlite store at the repository root
    run(
        [
            DVC,
            "exp",
            "run",
            "--temp",
            "-n",
            "short-exp",
            "-S",
            "train.epochs=1",
            "-S",
            "register.min_accuracy=1.0",
        ],
        pipeline_run,
        env,
    )
    db = pipeline_run / "mlflow.db"
    assert db.exists(), "the run went to the repository's mlflow.db, not the temp copy's"
    with sqlite3.connect(db) as con:
        tags = dict(
            con.execute("select key, value from tags where key = 'dvc_exp_name'").fetchall()
        )
    assert tags.get("dvc_exp_name") == "short-exp"
    shown = run([DVC, "exp", "show", "--no-pager", "--csv"], pipeline_run, env).stdout
    assert "short-exp" in shown and "test_accuracy" in shown
