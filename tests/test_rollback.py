"""Rolling back (`python -m pipeline.rollback`): `@champion` back to the version it replaced, said
in MLflow, served by BentoML, and never undone by the next register unless it is told to.

Rollbacks and registers run for real against the session's MLflow server and BentoML store, on
crafted runs (register_fixtures) in registered models of their own: `old` is promoted, then `new`
(left running until then) replaces it, then is rolled back, and rollbacks are SIGKILLed at each
step (`REGISTER_STOP_AT`, pipeline/promotion/steps.py).
"""

from __future__ import annotations

import datetime as dt
import getpass
import socket

import pytest
from mlflow import MlflowClient
from register_fixtures import (
    Stopped,
    finished,
    latest_version,
    register,
    registry_state,
    rollback_args,
)

pytest_plugins = ["register_fixtures"]  # crafted
pytestmark = pytest.mark.e2e


def test_rollback_restores_the_previous_champion_keeps_it_and_survives_a_kill(
    crafted, pipeline_run, pipeline_env, mlflow_server, bentoml_home, tmp_path
):
    """One registered model through its life: two promotions, a rollback, a register that keeps
    the rolled-back run out, one told to let it in, and rollbacks killed at each step."""
    experiment = model = f"{crafted['prefix']}-rollback"
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    # Version 1: the `old` run; version 2: the `new` one (finished since), which replaced it.
    for _ in range(2):
        proc, record = register(pipeline_run, pipeline_env, tmp_path, experiment, model)
        assert proc.returncode == 0 and record["decision"] == "promoted", proc.stderr[-3000:]
        client.set_terminated(crafted[f"{experiment}/new"], "FINISHED")
    assert registry_state(client, model) == (["1", "2"], "2")
    assert client.get_model_version(model, "1").tags["replaced_version"] == "none"
    assert client.get_model_version(model, "2").tags["replaced_version"] == "1"
    assert latest_version(bentoml_home, model) == "2"

    why = "returns doubled after v2 (ticket 12)"
    proc, record = finished(
        pipeline_run, pipeline_env, *rollback_args(pipeline_run, tmp_path, model, "--reason", why)
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"@champion is version 1 again (was 2): {why}" in proc.stdout
    assert registry_state(client, model) == (["1", "2"], "1")
    # Both versions say what happened, who did it and when.
    me = f"{getpass.getuser()}@{socket.gethostname()}"
    left, restored = (client.get_model_version(model, v).tags for v in ("2", "1"))
    assert (left["rolled_back"], left["rolled_back_reason"], left["rolled_back_to"]) == (
        "true",
        why,
        "1",
    )
    assert left["rolled_back_by"] == restored["restored_by"] == me
    when = dt.datetime.fromisoformat(left["rolled_back_at"])
    assert abs(dt.datetime.now(dt.UTC) - when) < dt.timedelta(hours=1)
    assert (restored["restored_from"], restored["restored_reason"]) == ("2", why)
    registered = client.get_registered_model(model)
    assert registered.tags["last_rollback"].startswith(f"v2 -> v1 by {me} at ")
    assert f"Rolled back: v2 -> v1 by {me}" in registered.description and why in (
        registered.description
    )
    # The BentoML store serves the restored version; champion.json says it was a rollback.
    assert latest_version(bentoml_home, model) == "1"
    assert record["decision"] == "rolled_back" and why in record["reason"]
    assert (record["champion"]["version"], record["previous_champion"]["version"]) == ("1", "2")
    assert record["rollback"] | {"at": "-"} == {
        "from": "2",
        "to": "1",
        "reason": why,
        "by": me,
        "at": "-",
    }
    store = bentoml_home / "models" / model
    assert record["served"] == f"{model}:{(store / 'latest').read_text().strip()}"

    # The next register does not promote the rolled-back run again, and says why.
    proc, record = register(pipeline_run, pipeline_env, tmp_path, experiment, model)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert record["decision"] == "kept"
    assert "already the champion (version 1)" in record["reason"]
    new_run = crafted[f"{experiment}/new"]
    assert (
        f"run {new_run} (validation accuracy 0.9000) ranks above it, but its version 2 "
        in (record["reason"])
    )
    assert "--allow-rolled-back" in record["reason"]
    assert registry_state(client, model) == (["1", "2"], "1")
    assert latest_version(bentoml_home, model) == "1"

    # Refused, changing nothing: no version before the first champion, a version that is not there.
    for args, words in (((), "was the first champion"), (("--to", "7"), "has no version 7")):
        cmd, out = rollback_args(pipeline_run, tmp_path, model, *args, "--reason", "again")
        proc, _ = finished(pipeline_run, pipeline_env, cmd, out)
        assert proc.returncode != 0 and words in proc.stderr, proc.stderr[-2000:]
        assert not out.exists()
    assert registry_state(client, model) == (["1", "2"], "1")

    # Told to: the rolled-back run is a candidate again, and wins on validation.
    proc, record = register(
        pipeline_run, pipeline_env, tmp_path, experiment, model, None, "--allow-rolled-back"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert record["decision"] == "promoted", record["reason"]
    assert record["candidate"]["run_id"] == new_run
    assert registry_state(client, model) == (["1", "2", "3"], "3")
    assert client.get_model_version(model, "3").tags["replaced_version"] == "1"
    assert latest_version(bentoml_home, model) == "3"

    # Rollbacks of version 3 SIGKILLed at each step. Before the alias move: the champion stays,
    # and the next register marks the rollback abandoned.
    def killed_at(step: str) -> None:
        command = rollback_args(pipeline_run, tmp_path, model, "--reason", f"killed at {step}")
        Stopped(pipeline_run, pipeline_env, tmp_path, "", model, step, command).kill()

    killed_at("rollback-marked")
    assert registry_state(client, model) == (["1", "2", "3"], "3")
    assert client.get_model_version(model, "3").tags["rolled_back"] == "pending"
    proc, record = register(pipeline_run, pipeline_env, tmp_path, experiment, model)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "version 3: rollback pending -> abandoned" in proc.stdout
    assert (record["decision"], record["champion"]["version"]) == ("kept", "3")
    assert client.get_model_version(model, "3").tags["rolled_back"] == "abandoned"
    # After it: version 1 is champion and the run already barred; the next register completes
    # the tags and makes the BentoML store serve version 1.
    killed_at("rollback-alias-moved")
    assert registry_state(client, model) == (["1", "2", "3"], "1")
    assert latest_version(bentoml_home, model) == "3"  # not synced yet
    proc, record = register(pipeline_run, pipeline_env, tmp_path, experiment, model)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "version 3: rollback pending -> true" in proc.stdout
    assert record["decision"] == "kept" and "already the champion (version 1)" in record["reason"]
    assert f"run {new_run} (validation accuracy 0.9000) ranks above it" in record["reason"]
    assert registry_state(client, model) == (["1", "2", "3"], "1")
    restored = client.get_model_version(model, "1").tags
    assert (restored["restored_from"], restored["restored_reason"]) == (
        "3",
        "killed at rollback-alias-moved",
    )
    assert latest_version(bentoml_home, model) == "1"
