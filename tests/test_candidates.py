"""Which run register judges: the best validated run, and with a feedback slice the best of the
runs scored on it (pipeline/promotion/choice.py `best_run`), on a real MLflow store (sqlite, in
process)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from pipeline.promotion.choice import best_run

pytestmark = pytest.mark.unit

VAL = "v" * 64
SLICE = "f" * 64


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[MlflowClient, str, dict[str, str]]:
    """An experiment with a champion-like run (no slice), two runs scored on slice SLICE (one
    better on validation than the other, both below the first) and a better run on other
    validation data: (client, experiment id, run ids by name)."""
    root = tmp_path_factory.mktemp("mlflow")
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.create_experiment("candidates", artifact_location=str(root / "artifacts"))
    runs = {}
    for name, val_acc, val_hash, slice_hash in (
        ("before-corrections", 0.951, VAL, None),
        ("corrected-a", 0.950, VAL, SLICE),
        ("corrected-b", 0.949, VAL, SLICE),
        ("other-validation", 0.990, "o" * 64, SLICE),
    ):
        run = client.create_run(experiment, run_name=name)
        client.log_metric(run.info.run_id, "best_val_accuracy", val_acc)
        client.log_metric(run.info.run_id, "test_accuracy", val_acc)
        client.set_tag(run.info.run_id, "val_data_hash", val_hash)
        if slice_hash:
            client.set_tag(run.info.run_id, "feedback_data_hash", slice_hash)
        client.set_terminated(run.info.run_id, "FINISHED")
        runs[name] = run.info.run_id
    return client, experiment, runs


def test_without_a_slice_the_best_on_validation_is_judged(store):
    client, experiment, runs = store
    best, passed_over = best_run(client, experiment, VAL)
    assert (best.info.run_id, passed_over) == (runs["before-corrections"], [])


def test_with_a_slice_the_best_run_scored_on_it_is_judged(store):
    client, experiment, runs = store
    best, _ = best_run(client, experiment, VAL, feedback_data_hash=SLICE)
    assert best.info.run_id == runs["corrected-a"]
    barred = frozenset({runs["corrected-a"]})
    best, passed_over = best_run(client, experiment, VAL, barred, SLICE)
    assert best.info.run_id == runs["corrected-b"]
    assert [r.info.run_id for r in passed_over] == [runs["corrected-a"]]


def test_when_every_run_scored_on_the_slice_is_barred_every_run_competes(store):
    """After a rollback of the corrected runs, register judges as it did before the slice."""
    client, experiment, runs = store
    barred = frozenset({runs["corrected-a"], runs["corrected-b"]})
    best, passed_over = best_run(client, experiment, VAL, barred, SLICE)
    assert (best.info.run_id, passed_over) == (runs["before-corrections"], [])


def test_a_slice_no_run_was_scored_on_falls_back_to_every_run(store):
    client, experiment, runs = store
    best, _ = best_run(client, experiment, VAL, feedback_data_hash="n" * 64)
    assert best.info.run_id == runs["before-corrections"]


def test_runs_validated_on_other_data_never_compete(store):
    client, experiment, runs = store
    for slice_hash in (None, SLICE):
        best, _ = best_run(client, experiment, VAL, feedback_data_hash=slice_hash)
        assert best.info.run_id != runs["other-validation"]
