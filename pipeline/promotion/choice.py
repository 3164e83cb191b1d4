"""Choosing: the experiment's best validated run, and the gate it must pass against the champion.

Validation data only; test accuracy is carried along and reported, never compared. Candidates are
the finished, evaluated runs validated on the current validation split (tag `val_data_hash`):
accuracies measured on other data are not comparable. The best has the highest
`best_val_accuracy`, the oldest first on ties.
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


def best_run(client: MlflowClient, experiment_id: str, val_data_hash: str) -> Run | None:
    """The finished, evaluated run with the highest validation accuracy on this validation data."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            "metrics.best_val_accuracy >= 0 and metrics.test_accuracy >= 0 "
            f"and tags.val_data_hash = '{val_data_hash}' and attributes.status = 'FINISHED'"
        ),
        order_by=["metrics.best_val_accuracy DESC", "attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0] if runs else None


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
