"""The register stage: the champion/challenger gate, its MLflow registry and BentoML store effects.

The gate itself, the promotion lock and the named steps are unit-tested in
tests/test_register_rules.py; here the stage runs for real (`python -m pipeline.register`)
against the session's MLflow server and private BentoML store: once on the pipeline's own run,
then on crafted runs (the pipeline's model logged again with chosen validation and test
accuracies) in experiments and a registered model of their own, so the pipeline's champion is
never touched.

Past 300 lines: the register sequences share the crafted runs, the pipeline workspace and the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
from conftest import BIN, free_port, run, start_server, stop
from mlflow import MlflowClient
from register_fixtures import (
    bento_models,
    crafted_data,
    latest_version,
    register,
    register_cmd,
    registry_state,
    sha256,
)

pytest_plugins = ["service_fixtures", "register_fixtures"]  # champion...; crafted
pytestmark = pytest.mark.e2e


def test_pipeline_run_is_promoted_into_both_stores(
    champion, pipeline_run, mlflow_server, bentoml_home, tmp_path
):
    run_id = json.loads((pipeline_run / "reports" / "train" / "run.json").read_text())
    run_id = run_id["mlflow_run_id"]
    accuracy = json.loads((pipeline_run / "reports" / "eval" / "metrics.json").read_text())
    trained = json.loads((pipeline_run / "reports" / "train" / "metrics.json").read_text())
    assert champion["decision"] == "promoted", champion["reason"]
    assert champion["chosen_by"] == "validation accuracy"
    assert "validation accuracy" in champion["reason"]
    assert champion["previous_champion"] is None
    assert champion["candidate"]["run_id"] == run_id
    assert champion["candidate"]["val_accuracy"] == trained["best_val_accuracy"]
    assert champion["candidate"]["test_accuracy"] == accuracy["test_accuracy"]
    # Keras and its ONNX export, on every test image: evaluate's classes and confidences.
    assert champion["parity"]["samples"] == len(
        np.load(pipeline_run / "data/prepared/test.npz")["y"]
    )
    assert champion["parity"]["keras_max_confidence_diff"] < 1e-4
    assert champion["parity"]["onnx_max_confidence_diff"] < 1e-4
    assert champion["parity"]["onnx_vs_keras_max_probability_diff"] < 1e-4
    assert champion["parity"]["explainer_vs_onnx_max_probability_diff"] < 1e-4
    assert champion["parity"]["explainer_vs_keras_max_relative_activation_diff"] < 1e-3
    assert champion["served"] == champion["champion"]["bento_model"]
    current = champion["champion"]
    assert current["run_id"] == run_id
    model_sha = sha256(pipeline_run / "models" / "model.keras")  # the file evaluate scored
    assert current["model_sha256"] == model_sha

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    version = client.get_model_version_by_alias(current["model_name"], "champion")
    assert version.version == current["version"]
    assert version.run_id == run_id
    assert version.tags["val_accuracy"] == str(trained["best_val_accuracy"])
    assert version.tags["test_accuracy"] == str(accuracy["test_accuracy"])
    assert version.tags["model_sha256"] == model_sha
    assert version.tags["bento_model"] == current["bento_model"]
    assert version.tags["git_commit"] == current["git_commit"] != "unknown"
    assert len(version.tags["data_hash"]) == 64
    # The model card: on the version and on the registered model.
    assert f"| validation accuracy (chosen by) | {trained['best_val_accuracy']:.4f} |" in (
        version.description
    )
    assert "floor((n + 2p - f) / s) + 1" in version.description
    assert "conv_0" in version.description and "| Ankle boot |" in version.description
    assert model_sha in version.description
    registered = client.get_registered_model(current["model_name"])
    assert f"Latest promoted: version {current['version']}" in registered.description

    name, bento_version = current["bento_model"].split(":")
    stored = bento_models(bentoml_home, name)[bento_version]
    assert stored["labels"] == {
        "mlflow_model_name": current["model_name"],
        "mlflow_model_version": current["version"],
        "mlflow_run_id": run_id,
        "val_accuracy": f"{trained['best_val_accuracy']:.4f}",
        "test_accuracy": f"{accuracy['test_accuracy']:.4f}",
        "model_sha256": model_sha,
        "onnx_sha256": version.tags["onnx_sha256"],
        "git_commit": current["git_commit"],
        "data_hash": version.tags["data_hash"],
    }
    assert stored["metadata"]["test_accuracy"] == accuracy["test_accuracy"]
    # The ONNX file the service runs is the one register checked and logged to the run.
    assert version.tags["promotion"] == "promoted"
    assert version.tags["exports_dir"] == f"promotion/v{version.version}"
    logged = mlflow.artifacts.download_artifacts(
        f"runs:/{run_id}/promotion/v{version.version}/model.onnx",
        dst_path=str(tmp_path / "onnx"),
        tracking_uri=mlflow_server,
    )
    onnx_served = bentoml_home / "models" / name / bento_version / "model.onnx"
    assert sha256(onnx_served) == sha256(Path(logged)) == version.tags["onnx_sha256"]
    source = client.get_model_version_download_uri(current["model_name"], current["version"])
    registered = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(tmp_path), tracking_uri=mlflow_server
        )
    )
    served = bentoml_home / "models" / name / bento_version / "model.keras"
    assert sha256(served) == sha256(registered / "data" / "model.keras") == model_sha


def test_import_only_brings_the_champion_into_an_empty_store(
    champion, pipeline_run, pipeline_env, tmp_path
):
    """A teammate's machine: same MLflow server, empty BentoML store -> `make serve`'s import."""
    env = {**pipeline_env, "BENTOML_HOME": str(tmp_path / "teammate")}
    current = champion["champion"]
    out = run(register_cmd("--import-only"), pipeline_run, env).stdout
    assert f"imported the champion (models:/{current['model_name']}/{current['version']})" in out
    (imported,) = bento_models(tmp_path / "teammate", current["bento_model"].split(":")[0]).items()
    version, info = imported
    assert info["labels"]["mlflow_model_version"] == current["version"]
    folder = tmp_path / "teammate" / "models" / current["bento_model"].split(":")[0] / version
    assert sha256(folder / "model.keras") == current["model_sha256"]
    assert sha256(folder / "model.onnx") == current["onnx_sha256"]
    # ...and the explainer behind /explain and /ui, checked against the version's tags.
    assert sha256(folder / "explainer.onnx") == current["explainer_onnx_sha256"] != "unknown"
    assert sha256(folder / "explainer.json") == current["explainer_json_sha256"] != "unknown"
    again = run(register_cmd("--import-only"), pipeline_run, env).stdout
    assert "imported" not in again and f":{version}" in again  # already there: nothing to do


def test_rerun_keeps_the_champion(champion, pipeline_run, pipeline_env, bentoml_home, tmp_path):
    name = champion["champion"]["bento_model"].split(":")[0]
    before = bento_models(bentoml_home, name)
    out = tmp_path / "champion.json"
    run(register_cmd("--out", str(out)), pipeline_run, pipeline_env)
    record = json.loads(out.read_text())
    assert record["decision"] == "kept"
    assert "already the champion" in record["reason"]
    assert record["champion"] == champion["champion"]
    assert bento_models(bentoml_home, name) == before


def test_floor_blocks_a_first_champion(
    crafted, pipeline_run, pipeline_env, mlflow_server, bentoml_home, tmp_path
):
    model = f"{crafted['prefix']}-floor"
    proc, record = register(
        pipeline_run, pipeline_env, tmp_path, f"{crafted['prefix']}-floor", model
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert record["decision"] == "kept"
    assert "validation accuracy 0.4000 is below the floor min_accuracy=0.5000" in record["reason"]
    assert record["candidate"]["val_accuracy"] == 0.40
    assert record["champion"] is None
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    assert registry_state(client, model) == ([], None)
    assert bento_models(bentoml_home, model) == {}


def test_champion_challenger_sequence(
    crafted, pipeline_run, pipeline_env, mlflow_server, bentoml_home, tmp_path
):
    prefix = crafted["prefix"]
    model = f"{prefix}-registry"
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)

    def step(scenario: str):
        return register(pipeline_run, pipeline_env, tmp_path, f"{prefix}-{scenario}", model)

    # 1. No champion yet: the first candidate above the floor is promoted into both stores.
    proc, record = step("first")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert record["decision"] == "promoted"
    assert record["champion"]["version"] == "1"
    assert record["champion"]["run_id"] == crafted[f"{prefix}-first"]
    assert registry_state(client, model) == (["1"], "1")
    store = bento_models(bentoml_home, model)
    assert [m["labels"]["mlflow_model_version"] for m in store.values()] == ["1"]

    # 2. A better candidate whose model does not reproduce its evaluation: the stage fails, untouched.
    proc, _ = step("parity")
    assert proc.returncode != 0
    assert "parity" in proc.stderr
    assert registry_state(client, model) == (["1"], "1")
    assert bento_models(bentoml_home, model) == store

    # 3. A worse candidate (validation 0.70 vs 0.80, max_regression 0.002): the champion is kept.
    proc, record = step("worse")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert record["decision"] == "kept"
    assert "more than max_regression" in record["reason"]
    assert record["candidate"]["val_accuracy"] == 0.70
    assert record["champion"]["val_accuracy"] == 0.80
    assert record["champion"] == record["previous_champion"]
    assert registry_state(client, model) == (["1"], "1")
    assert bento_models(bentoml_home, model) == store

    # 4. Test accuracy never chooses: 0.99 on test but 0.75 on validation is not promoted.
    proc, record = step("better-test-worse-val")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (record["decision"], record["candidate"]["test_accuracy"]) == ("kept", 0.99)
    assert "validation accuracy 0.7500 is 0.0500 below the champion's 0.8000" in record["reason"]
    assert registry_state(client, model) == (["1"], "1")

    # 5. Better on validation (though worse on test): version 2 becomes the champion; the old
    # BentoML model stays as it was.
    proc, record = step("better")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert record["decision"] == "promoted"
    assert record["previous_champion"]["version"] == "1"
    champion = record["champion"]
    assert (champion["version"], champion["val_accuracy"], champion["test_accuracy"]) == (
        "2",
        0.90,
        0.60,
    )
    assert registry_state(client, model) == (["1", "2"], "2")
    after = bento_models(bentoml_home, model)
    assert {k: v for k, v in after.items() if k in store} == store
    (new,) = (after[k] for k in after.keys() - store.keys())
    assert new["labels"]["mlflow_model_version"] == "2"
    assert new["labels"]["mlflow_run_id"] == crafted[f"{prefix}-better"]
    assert record["champion"]["bento_model"] == f"{model}:{new['version']}"

    # 6. Nothing new: the best run is already the champion.
    proc, record = step("better")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (record["decision"], record["champion"]["version"]) == ("kept", "2")
    assert registry_state(client, model) == (["1", "2"], "2")


def test_champion_validated_on_other_data_is_remeasured(
    crafted, pipeline_run, pipeline_env, mlflow_server, test_images, tmp_path
):
    """A champion whose 0.99 was measured on another validation split is measured again on this
    one before the comparison; the candidate (0.95 here) is compared with what it really gets."""
    prefix = crafted["prefix"]
    model = f"{prefix}-remeasured"
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    pipeline_run_id = json.loads((pipeline_run / "reports" / "train" / "run.json").read_text())
    source = f"runs:/{pipeline_run_id['mlflow_run_id']}/model"
    mlflow.set_tracking_uri(mlflow_server)
    old = mlflow.register_model(
        source, model, tags={"val_accuracy": "0.99", "val_data_hash": "0" * 64}
    )
    client.set_registered_model_alias(model, "champion", old.version)
    from pipeline.shared.dataset import load_split
    from pipeline.shared.keras_runtime import Classifier

    val = load_split(pipeline_run / "data" / "prepared" / "val.npz")
    classifier = Classifier.from_file(pipeline_run / "models" / "model.keras")
    real = float((classifier.predict_proba(val.x).argmax(axis=1) == val.y).mean())
    assert real < 0.95  # a 2-epoch model: the crafted 0.95 may replace it once it is re-measured

    proc, record = register(pipeline_run, pipeline_env, tmp_path, f"{prefix}-remeasure", model)
    assert proc.returncode == 0, proc.stderr[-2000:]
    remeasured = record["champion_remeasured"]
    assert remeasured["val_accuracy_before"] == 0.99
    assert remeasured["val_accuracy"] == pytest.approx(real)
    assert "validated on other data" in remeasured["reason"]
    assert record["decision"] == "promoted", record["reason"]
    assert f"the champion's {real:.4f}" in record["reason"]
    assert registry_state(client, model) == (["1", "2"], "2")


def feedback_data(ws: Path, dest: Path, right: str | None) -> Path:
    """The crafted runs' prepared splits with a feedback slice: the images where the crafted
    models disagree, labelled with the classes of model `right` ("base" or "shifted"; the other
    gets every one wrong), or an empty slice (None)."""
    dest.mkdir()
    for split in ("val.npz", "test.npz"):
        (dest / split).write_bytes((crafted_data(ws) / split).read_bytes())
    with np.load(crafted_data(ws) / "disagree.npz") as d:
        x, y = (d["x"], d[right]) if right else (d["x"][:0], d["base"][:0])
    np.savez(dest / "feedback.npz", x=x, y=y, sha256=np.array(["0" * 64] * len(y)))
    return dest


def test_the_gate_weighs_validation_and_the_feedback_slice(
    crafted, pipeline_run, pipeline_env, mlflow_server, bentoml_home, tmp_path
):
    """Both sides of the gate, each model measured on the slice by register itself: a candidate
    better on both is promoted; one worse on validation is kept out (an empty slice: not
    checked); one better on validation but worse on the slice is kept out."""
    prefix = crafted["prefix"]
    model = f"{prefix}-feedback"
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    data = feedback_data(pipeline_run, tmp_path / "slice", right="base")
    n = len(np.load(data / "feedback.npz")["y"])
    assert n >= 20, "the crafted models disagree on too few images for a slice"

    def step(scenario: str, where: Path = data):
        proc, record = register(
            pipeline_run, pipeline_env, tmp_path, f"{prefix}-{scenario}", model, where
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout, record

    # No champion: the shifted model (wrong on every slice image) is promoted on validation alone.
    out, record = step("fb-first")
    assert record["decision"] == "promoted"
    assert f"feedback slice ({n} images): accuracy 0.0000, no champion" in record["reason"]
    assert record["scores"]["feedback"] | {"data_hash": "-"} == {
        "samples": n,
        "candidate": 0.0,
        "champion": None,
        "data_hash": "-",
    }
    assert client.get_model_version(model, "1").tags["replaced_version"] == "none"

    # Better on both: promoted; the decision and its printed line give both numbers of both.
    out, record = step("fb-both")
    assert record["decision"] == "promoted", record["reason"]
    assert (
        "validation accuracy 0.8500 >= min_accuracy=0.5000 and above the champion's 0.8000"
        in record["reason"]
    )
    assert (
        f"feedback slice ({n} images): accuracy 1.0000 above the champion's 0.0000"
        in record["reason"]
    )
    scores = record["scores"]
    assert scores["validation"] == {
        "samples": scores["validation"]["samples"],
        "candidate": 0.85,
        "champion": 0.80,
    }
    assert (scores["feedback"]["candidate"], scores["feedback"]["champion"]) == (1.0, 0.0)
    assert (
        f"candidate 0.8500, champion 0.8000; feedback slice ({n} images) candidate 1.0000, "
        "champion 0.0000"
    ) in out
    assert client.get_model_version(model, "2").tags["replaced_version"] == "1"
    assert registry_state(client, model) == (["1", "2"], "2")

    # Worse on validation: kept. With an empty slice that side is not checked, and says so.
    empty = feedback_data(pipeline_run, tmp_path / "empty", right=None)
    out, record = step("fb-val", empty)
    assert record["decision"] == "kept"
    assert "0.1500 below the champion's 0.8500, more than max_regression" in record["reason"]
    assert "feedback slice empty: not checked" in record["reason"]
    assert record["scores"]["feedback"] == {
        "samples": 0,
        "candidate": None,
        "champion": None,
        "note": "empty",
    }
    assert "feedback slice empty" in out

    # Better on validation, worse on the slice: kept, and the reason says which side failed.
    out, record = step("fb-slice")
    assert record["decision"] == "kept"
    assert (
        "validation accuracy 0.9000 >= min_accuracy=0.5000 and above the champion's 0.8500"
        in record["reason"]
    )
    assert (
        f"feedback slice ({n} images): accuracy 0.0000 is 1.0000 below the champion's 1.0000, "
        "more than max_feedback_regression=0.0000"
    ) in record["reason"]
    assert registry_state(client, model) == (["1", "2"], "2")
    assert latest_version(bentoml_home, model) == "2"


def test_champion_loads_with_plain_mlflow_on_raw_pixels(
    champion, mlflow_server, test_images, evaluated
):
    """No project code: pyfunc on uint8 test images gives evaluate's predictions."""
    mlflow.set_tracking_uri(mlflow_server)
    name = champion["champion"]["model_name"]
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    inputs = model.metadata.get_input_schema().inputs
    assert [(i.type, i.shape) for i in inputs] == [(np.dtype("uint8"), (-1, 28, 28))]
    x, _ = test_images
    proba = np.asarray(model.predict(x[:256]))
    assert proba.shape == (256, 10)
    assert (proba.argmax(axis=1) == evaluated["predicted_id"].to_numpy()[:256]).all()
    np.testing.assert_allclose(
        proba.max(axis=1), evaluated["confidence"].to_numpy()[:256], atol=1e-4
    )


def test_mlflow_models_serve_answers_raw_pixels(
    champion, pipeline_env, mlflow_server, test_images, evaluated, tmp_path
):
    """What an MLflow user runs instead of our service: it takes the pixels as they are."""
    name = champion["champion"]["model_name"]
    port = free_port()
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion"]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    proc = start_server(cmd, tmp_path, pipeline_env, tmp_path / "serve.log", f"{url}/ping", 240)
    try:
        x, _ = test_images
        resp = requests.post(f"{url}/invocations", json={"inputs": x[:16].tolist()}, timeout=60)
    finally:
        stop(proc)
    assert resp.status_code == 200, resp.text
    proba = np.asarray(resp.json()["predictions"])
    assert (proba.argmax(axis=1) == evaluated["predicted_id"].to_numpy()[:16]).all()
