"""Choosing: the experiment's best validated run, and the gate it must pass against the champion.

Validation data and the feedback slice only; test accuracy is carried along and reported, never
compared. Candidates are the finished, evaluated runs validated on the current validation split
(tag `val_data_hash`): accuracies measured on other data are not comparable. The best has the
highest `best_val_accuracy`, the oldest first on ties; runs a rollback took `@champion` from are
passed over (the caller names them); when the feedback slice is not empty, runs evaluated on it
come first (`best_run`). The gate has two sides, each a pure function: `decide` on
validation accuracy, `decide_feedback` on the feedback slice (the corrections people sent, held
out of training), where both models are measured the same way (judge.py).
"""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run

from pipeline.core.params import RegisterParams
from pipeline.promotion.record import Candidate, RegisterError


def decide(
    candidate_acc: float, champion_acc: float | None, params: RegisterParams
) -> tuple[bool, str]:
    """The gate on validation accuracy: (promote?, why). Pure, so every branch is unit-testable."""
    floor = params.min_accuracy
    if candidate_acc < floor:
        return (
            False,
            f"validation accuracy {candidate_acc:.4f} is below the floor min_accuracy={floor:.4f}",
        )
    if champion_acc is None:
        return (
            True,
            f"no champion yet; validation accuracy {candidate_acc:.4f} >= min_accuracy={floor:.4f}",
        )
    drop = champion_acc - candidate_acc
    if drop > params.max_regression + 1e-12:
        return False, (
            f"validation accuracy {candidate_acc:.4f} is {drop:.4f} below the champion's "
            f"{champion_acc:.4f}, more than max_regression={params.max_regression:.4f}"
        )
    relation = "above" if drop < 0 else "within max_regression of"
    return True, (
        f"validation accuracy {candidate_acc:.4f} >= min_accuracy={floor:.4f} and {relation} "
        f"the champion's {champion_acc:.4f}"
    )


def decide_feedback(
    candidate_acc: float | None,
    champion_acc: float | None,
    samples: int,
    params: RegisterParams,
    note: str = "empty",
) -> tuple[bool, str]:
    """The gate on the feedback slice: (passes?, why). An empty slice (or none: `note` says why)
    and a first champion pass unchecked."""
    if samples == 0 or candidate_acc is None:
        return True, f"feedback slice {note}: not checked"
    where = f"feedback slice ({samples} images)"
    if champion_acc is None:
        return True, f"{where}: accuracy {candidate_acc:.4f}, no champion to compare with"
    drop = champion_acc - candidate_acc
    tolerance = params.max_feedback_regression
    if drop > tolerance + 1e-12:
        return False, (
            f"{where}: accuracy {candidate_acc:.4f} is {drop:.4f} below the champion's "
            f"{champion_acc:.4f}, more than max_feedback_regression={tolerance:.4f}"
        )
    if drop < -1e-12:
        relation = "above"
    elif drop <= 1e-12:  # a slice of a few images: equal accuracies are common
        relation = "equal to"
    else:
        relation = "within max_feedback_regression of"
    return (
        True,
        f"{where}: accuracy {candidate_acc:.4f} {relation} the champion's {champion_acc:.4f}",
    )


# The tag `evaluate` sets on a run it scored on a non-empty feedback slice: the slice's content hash.
FEEDBACK_TAG = "tags.feedback_data_hash"


def best_run(
    client: MlflowClient,
    experiment_id: str,
    val_data_hash: str,
    barred: frozenset[str] = frozenset(),
    feedback_data_hash: str | None = None,
) -> tuple[Run | None, list[Run]]:
    """The finished, evaluated run with the highest validation accuracy on this validation data
    whose id is not in `barred`, and the barred runs that rank above it (best first).

    With `feedback_data_hash` (a non-empty feedback slice), the runs evaluated on that slice
    compete, if there is one: they were trained once the corrections in it existed, and the
    champion they face (trained before, so not among them) is measured on the slice by the gate.
    Otherwise a retraining on corrections that costs a little validation accuracy, within
    max_regression, would never be judged: the champion's own run would rank first."""
    query = (
        "metrics.best_val_accuracy >= 0 and metrics.test_accuracy >= 0 "
        f"and tags.val_data_hash = '{val_data_hash}' and attributes.status = 'FINISHED'"
    )
    if feedback_data_hash:
        found = _best(
            client, experiment_id, barred, f"{query} and {FEEDBACK_TAG} = '{feedback_data_hash}'"
        )
        if found[0] is not None:  # else none is left (or all are barred): every run competes
            return found
    return _best(client, experiment_id, barred, query)


def _best(
    client: MlflowClient, experiment_id: str, barred: frozenset[str], query: str
) -> tuple[Run | None, list[Run]]:
    runs = client.search_runs(
        [experiment_id],
        filter_string=query,
        order_by=["metrics.best_val_accuracy DESC", "attributes.start_time ASC"],
        max_results=len(barred) + 1,  # at least one of them is not barred, if there is one
    )
    passed_over = []
    for run in runs:
        if run.info.run_id not in barred:
            return run, passed_over
        passed_over.append(run)
    return None, passed_over


def logged_model_uri(run: Run) -> str:
    """models:/<model_id> of the Keras model `train` logged in this run (name "model")."""
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = 'model'",
        output_format="list",
    )
    if not models:
        raise RegisterError(f"run {run.info.run_id} has no logged model named 'model'")
    return f"models:/{models[0].model_id}"


def candidate_of(run: Run) -> Candidate:
    """The candidate record of a run, from its tags and metrics."""
    tags, metrics = run.data.tags, run.data.metrics
    return Candidate(
        run_id=run.info.run_id,
        run_name=run.info.run_name,
        model_uri=logged_model_uri(run),
        val_accuracy=metrics["best_val_accuracy"],
        test_accuracy=metrics["test_accuracy"],
        val_data_hash=tags.get("val_data_hash", "unknown"),
        model_sha256=tags.get("model_sha256", "unknown"),
        git_commit=tags.get("git_commit", "unknown"),
        data_hash=tags.get("data_hash", "unknown"),
    )
