"""Promotion that survives overlap and crashes, on a shared tracking server (no lock there).

Registers run for real (`python -m pipeline.register`) on crafted runs in the session's MLflow
server and BentoML store; `REGISTER_STOP_AT=<step>` (pipeline/promotion/steps.py) stops one at a
named step, so a test can interleave two of them or SIGKILL one exactly there. Afterwards the
three stores must agree: MLflow's `@champion` (the best validated run), champion.json and the
BentoML store's `latest`; and whatever a killed register left is settled by the next one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from register_fixtures import Stopped, bento_models, latest_version, register, registry_state

from pipeline.core.inference import altered_files

pytest_plugins = ["register_fixtures"]  # crafted
pytestmark = pytest.mark.e2e


def finish_run(client: MlflowClient, run_id: str) -> None:
    """The crafted run left RUNNING finishes (train and evaluate done): now a candidate."""
    client.set_terminated(run_id, "FINISHED")


def promotion_tags(client: MlflowClient, model: str) -> dict[str, str]:
    """version -> its `promotion` tag."""
    versions = client.search_model_versions(f"name='{model}'")
    return {v.version: v.tags.get("promotion") for v in versions}


@pytest.mark.parametrize("better_finishes", ["first", "last"])
def test_overlapping_registers_end_with_the_best_run_champion(
    better_finishes, crafted, pipeline_run, pipeline_env, mlflow_server, bentoml_home, tmp_path
):
    """Register A chose the worse run (the better one was still running) and stopped just before
    moving the alias. The better run finishes and its register B starts: it runs to the end before
    A resumes ("first"), or stops before its alias move too and resumes after A ("last"). Either
    way A decides again, finds the better run, and steps back; `@champion` is the better run."""
    experiment = f"{crafted['prefix']}-race-{better_finishes}"
    model = experiment
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    a = Stopped(pipeline_run, pipeline_env, tmp_path, experiment, model, "before-alias")
    finish_run(client, crafted[f"{experiment}/better"])
    if better_finishes == "first":
        proc, b_record = register(pipeline_run, pipeline_env, tmp_path, experiment, model)
        assert proc.returncode == 0, proc.stderr[-3000:]
        a_record = a.finish()
    else:
        b = Stopped(pipeline_run, pipeline_env, tmp_path, experiment, model, "before-alias")
        a_record = a.finish()
        b_record = b.finish()

    best = crafted[f"{experiment}/better"]
    assert a_record["candidate"]["run_id"] == crafted[f"{experiment}/worse"]
    assert a_record["decision"] == "superseded", a_record["reason"]
    assert "decided again" in a_record["reason"]
    assert f"run {best} (validation accuracy 0.9000) is now the best" in a_record["reason"]
    assert b_record["decision"] == "promoted", b_record["reason"]
    assert b_record["candidate"]["run_id"] == best
    champion = client.get_model_version_by_alias(model, "champion")
    assert champion.run_id == best
    # A's version was registered, never aliased, and says so; B's is the promoted one.
    assert promotion_tags(client, model) == {"1": "superseded", "2": "promoted"}
    assert registry_state(client, model) == (["1", "2"], "2")
    # The last register to finish wrote the champion as it stands; the store serves it.
    last = b_record if better_finishes == "last" else a_record
    assert last["champion"]["version"] == champion.version
    assert last["champion"]["run_id"] == best
    assert latest_version(bentoml_home, model) == champion.version
    assert last["served"] == f"{model}:{(bentoml_home / 'models' / model / 'latest').read_text()}"
    # The never-aliased version was never imported into the BentoML store.
    stored = bento_models(bentoml_home, model)
    assert {m["labels"]["mlflow_model_version"] for m in stored.values()} == {"2"}


def test_a_register_killed_at_any_step_is_settled_by_the_next(
    crafted, pipeline_run, pipeline_env, mlflow_server, bentoml_home, tmp_path
):
    """SIGKILL at each step of promoting `new` over the champion `old`: in between, MLflow's
    `@champion` and the BentoML store's `latest` never show a model that was not champion, no
    broken model is left where BentoML would load it, and the next register settles it all."""
    experiment = f"{crafted['prefix']}-killed"
    model = experiment
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    proc, record = register(pipeline_run, pipeline_env, tmp_path, experiment, model)
    assert proc.returncode == 0 and record["decision"] == "promoted", proc.stderr[-3000:]
    assert registry_state(client, model) == (["1"], "1")
    finish_run(client, crafted[f"{experiment}/new"])

    def killed_at(step: str) -> None:
        Stopped(pipeline_run, pipeline_env, tmp_path, experiment, model, step).kill()

    # Killed before the alias move: the old champion stays, in MLflow and in BentoML; each
    # version a killed register left is marked abandoned by the next register.
    for n, step in enumerate(("registered", "before-alias"), start=2):
        killed_at(step)
        versions, alias = registry_state(client, model)
        assert (versions[-1], alias) == (str(n), "1"), step
        assert promotion_tags(client, model) == {
            "1": "promoted",
            **{str(v): "abandoned" for v in range(2, n)},
            str(n): "in_progress",
        }, step
        assert latest_version(bentoml_home, model) == "1", step

    # Killed right after the alias move (the commit point): `new` (version 4) is champion; the
    # BentoML store still holds the old one until a register or `make serve` syncs it.
    killed_at("alias-moved")
    assert registry_state(client, model) == (["1", "2", "3", "4"], "4")
    assert latest_version(bentoml_home, model) == "1"
    # The next register finds the best run already champion and imports it into BentoML:
    # killed there, mid-import, `latest` is still the old model and nothing broken was stored.
    before = set(bento_models(bentoml_home, model))
    killed_at("bento-import")
    assert set(bento_models(bentoml_home, model)) == before
    assert latest_version(bentoml_home, model) == "1"
    assert promotion_tags(client, model) == {
        "1": "promoted",
        "2": "abandoned",
        "3": "abandoned",
        "4": "promoted",
    }

    # A copy into the store cut short (BentoML copies into the store last): a folder without its
    # model.yaml, and one with model.yaml but a file missing. Neither may stay or be served.
    store = bentoml_home / "models" / model
    old = store / (store / "latest").read_text().strip()
    shutil.copytree(old, store / "cutshort1")
    (store / "cutshort1" / "model.yaml").unlink()
    shutil.copytree(old, store / "cutshort2")
    (store / "cutshort2" / "model.onnx").unlink()
    assert altered_files(store / "cutshort2", *labels_and_metadata(old)) == ["model.onnx"]

    proc, record = register(pipeline_run, pipeline_env, tmp_path, experiment, model)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "deleted" in proc.stdout and "cutshort1" in proc.stdout and "cutshort2" in proc.stdout
    assert record["decision"] == "kept" and "already the champion" in record["reason"]
    assert (record["champion"]["version"], record["champion"]["run_id"]) == (
        "4",
        crafted[f"{experiment}/new"],
    )
    assert latest_version(bentoml_home, model) == "4"
    assert record["served"] == f"{model}:{(store / 'latest').read_text()}"
    latest = store / (store / "latest").read_text().strip()
    assert altered_files(latest, *labels_and_metadata(latest)) == []
    assert not (store / "cutshort1").exists() and not (store / "cutshort2").exists()
    assert client.get_model_version(model, "4").tags["bento_model"] == record["served"]


def labels_and_metadata(folder: Path) -> tuple[dict, dict]:
    import yaml

    info = yaml.safe_load((folder / "model.yaml").read_text())
    return info["labels"], info["metadata"]
