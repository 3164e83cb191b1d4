"""The real pipeline: `dvc repro` in a workspace copy, tracked by a real `mlflow server`."""

from __future__ import annotations

import json
import re
import sqlite3

import mlflow
import pytest
from conftest import BIN, SMALL_RUN, base_env, copy_workspace, run, set_params
from mlflow.tracking import MlflowClient

from pipeline.core.fashion_mnist import MIRRORS, RAW_FILES, SHA256
from pipeline.core.inference import file_sha256
from pipeline.shared.dataset import content_hash, load_split
from pipeline.shared.machine import cpus, trained_on
from pipeline.shared.tracking import download_keras_file

pytest_plugins = ["service_fixtures"]  # champion

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
    sources = json.loads((ws / "data" / "raw" / "sources.json").read_text())
    assert sorted(p.name for p in (ws / "data" / "raw").iterdir()) == sorted(
        [*sources, "sources.json"]
    )
    assert {n: s["sha256"] for n, s in sources.items()} == SHA256
    assert {s["mirror"] for s in sources.values()} <= set(MIRRORS)
    second = run([DVC, "repro", "prepare"], ws, env)
    # feedback always runs (it reads the service's corrections, which DVC cannot see); with none
    # new its output is the same, so prepare does not run again.
    assert re.findall(r"Running stage '(\w+)'", second.stdout) == ["feedback"], second.stdout
    assert "Stage 'prepare' didn't change, skipping" in second.stdout


@pytest.fixture(scope="module")
def tracked_run(pipeline_run, mlflow_server):
    client = MlflowClient(tracking_uri=mlflow_server)
    run_id = json.loads((pipeline_run / "reports" / "train" / "run.json").read_text())
    return client, client.get_run(run_id["mlflow_run_id"])


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
    # The CPU beside the run, in MLflow and in run.json: train_seconds is only comparable with it.
    record = json.loads((pipeline_run / "reports" / "train" / "run.json").read_text())
    assert tags["machine"] == record["machine"] == trained_on()
    assert f"{cpus()} CPUs" in record["machine"]
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        history = client.get_metric_history(tracked.info.run_id, metric)
        assert [m.step for m in history] == [1, 2], metric
    assert 0.5 < tracked.data.metrics["test_accuracy"] <= 1.0


def test_run_records_the_kept_epochs_validation_metrics(pipeline_run, tracked_run):
    client, tracked = tracked_run
    metrics = tracked.data.metrics
    written = json.loads((pipeline_run / "reports" / "train" / "metrics.json").read_text())
    history = client.get_metric_history(tracked.info.run_id, "val_accuracy")
    best = max(history, key=lambda m: (m.value, -m.step))  # the first best epoch is kept
    assert metrics["best_epoch"] == written["best_epoch"] == best.step
    assert metrics["best_val_accuracy"] == pytest.approx(best.value)
    assert written["best_val_accuracy"] == pytest.approx(best.value)
    val_loss = {m.step: m.value for m in client.get_metric_history(tracked.info.run_id, "val_loss")}
    assert metrics["best_val_loss"] == pytest.approx(val_loss[best.step])
    val = load_split(pipeline_run / "data" / "prepared" / "val.npz")
    assert tracked.data.tags["val_data_hash"] == content_hash(val)


def test_model_file_is_the_logged_one_byte_for_byte(
    pipeline_run, tracked_run, mlflow_server, tmp_path
):
    _, tracked = tracked_run
    local = pipeline_run / "models" / "model.keras"
    assert tracked.data.tags["model_sha256"] == file_sha256(local)
    mlflow.set_tracking_uri(mlflow_server)
    uri = f"runs:/{tracked.info.run_id}/model"
    logged = download_keras_file(uri, tmp_path)
    assert file_sha256(logged) == file_sha256(local)


def input_tags(dataset_input) -> dict[str, str]:
    return {t.key: t.value for t in dataset_input.tags}


def test_experiment_opens_on_training_runs_with_their_datasets(pipeline_run, tracked_run):
    client, tracked = tracked_run
    experiment = client.get_experiment(tracked.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    inputs = {  # train and validation logged by train, test by evaluate
        input_tags(d)["mlflow.data.context"]: d for d in tracked.inputs.dataset_inputs
    }
    assert set(inputs) == {"train", "validation", "test"}
    sources = json.loads((pipeline_run / "data" / "raw" / "sources.json").read_text())
    for context, split in (("train", "train"), ("validation", "val"), ("test", "test")):
        data = load_split(pipeline_run / "data" / "prepared" / f"{split}.npz")
        dataset = inputs[context].dataset
        assert dataset.name == f"fashion-mnist-{context}"
        assert dataset.digest == content_hash(data)[: len(dataset.digest)]
        assert len(dataset.digest) >= 16
        raw = RAW_FILES["test" if split == "test" else "train"]
        assert sources[raw[0]]["mirror"] in dataset.source
        tags = input_tags(inputs[context])
        assert {tags[f"sha256:{name}"] for name in raw} == {sources[n]["sha256"] for n in raw}


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


def test_second_repro_retrains_nothing_and_keeps_the_champion(pipeline_run, pipeline_env, champion):
    out = run([DVC, "repro"], pipeline_run, pipeline_env).stdout
    # feedback and register always run (corrections and the registry are state DVC cannot see);
    # nothing else does.
    assert re.findall(r"Running stage '(\w+)'", out) == ["feedback", "register"]
    record = json.loads((pipeline_run / "reports" / "register" / "champion.json").read_text())
    assert record["decision"] == "kept" and "already the champion" in record["reason"]
    assert record["champion"]["version"] == champion["champion"]["version"]


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
