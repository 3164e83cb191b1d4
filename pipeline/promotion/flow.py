"""What `register` does, step by step, under the promotion lock:

1. `settle_leftovers`: what killed registers and rollbacks left (registry.py's `repair`);
2. `decide_and_promote`: judge the experiment's best validated run against the champion
   (judge.py); if the gate passes, check its exports and promote it (promote.py), which judges
   once more right before the alias move; what came of it is a `Verdict`;
3. `sync_bentoml_store`: whatever was decided, the local BentoML store serves the `@champion`
   (bento_store.py), which `served_champion` reads back.

The `Decision` written to champion.json is built once, at the end, from the verdict and the
champion served. `import_champion` is step 3 alone (`register --import-only`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from mlflow import MlflowClient

from pipeline.core.params import Params
from pipeline.core.paths import FEEDBACK_SLICE, SPLIT_FILES
from pipeline.promotion.bento_store import sync_bentoml_store
from pipeline.promotion.judge import FeedbackSlice, Judge, Judgement, Measurer
from pipeline.promotion.promote import check_exports, claim, promote, still_promotes
from pipeline.promotion.record import Candidate, Champion, Decision, RegisterError
from pipeline.promotion.registry import (
    champion_summary,
    current_champion,
    promotion_lock,
    repair,
    run_artifact,
)
from pipeline.shared.dataset import load_split
from pipeline.shared.tracking import tracking_uri, use_experiment

CHOSEN_BY = "validation accuracy"


@dataclass(frozen=True)
class RegisterInputs:
    """What register is given: the pipeline run's files and how to choose."""

    params: Params
    metrics: Path  # evaluate's metrics.json: the pipeline run's test accuracy
    predictions: Path  # evaluate's predictions.csv: what the exports must reproduce
    data: Path  # prepare's directory: the validation and test splits, the feedback slice
    run: Path  # train's run.json: the pipeline run's MLflow run id
    allow_rolled_back: bool = False  # runs a rollback took @champion from may compete again

    def pipeline_run(self) -> dict[str, Any]:
        """The run this `dvc repro` trained: its MLflow run id and test accuracy."""
        return {
            "run_id": json.loads(self.run.read_text())["mlflow_run_id"],
            "test_accuracy": json.loads(self.metrics.read_text())["test_accuracy"],
        }


@dataclass(frozen=True)
class Verdict:
    """What deciding (and promoting) came to: the decision and why, and what it rested on."""

    decision: Literal["kept", "promoted", "superseded"]
    reason: str
    candidate: Candidate
    previous_champion: Champion | None  # the champion the last judgment saw
    champion_remeasured: dict[str, Any] | None
    scores: dict[str, Any]
    parity: dict[str, Any] | None = None  # the exports' check, once there were exports

    @classmethod
    def kept(cls, judged: Judgement) -> Verdict:
        """The gate did not pass: nothing was promoted."""
        return cls.of("kept", judged.reason, judged.candidate, scored=judged, last=judged)

    @classmethod
    def after_promotion(
        cls, decided: Judgement, rechecked: Judgement, parity: dict[str, Any]
    ) -> Verdict:
        """`decided` promoted its candidate; `rechecked`, judged right before the alias move,
        moved the alias (promoted) or found the registry changed (superseded)."""
        candidate = decided.candidate
        if not still_promotes(rechecked, candidate):
            why = rechecked.reason
            if rechecked.candidate.run_id != candidate.run_id:
                why = (
                    f"run {rechecked.candidate.run_id} (validation accuracy "
                    f"{rechecked.candidate.val_accuracy:.4f}) is now the best validated run"
                )
            reason = (
                f"the registry changed while promoting {candidate.run_id}; decided again: {why}"
            )
            return cls.of("superseded", reason, candidate, decided, rechecked, parity)
        if _version(rechecked.champion) == _version(decided.champion):
            return cls.of("promoted", decided.reason, candidate, decided, rechecked, parity)
        # Another champion came in meanwhile and this candidate beat it too: that judgment counts.
        reason = f"{rechecked.reason} (the champion changed while promoting: decided again)"
        return cls.of("promoted", reason, candidate, rechecked, rechecked, parity)

    @classmethod
    def of(
        cls,
        decision: Literal["kept", "promoted", "superseded"],
        reason: str,
        candidate: Candidate,
        scored: Judgement,
        last: Judgement,
        parity: dict[str, Any] | None = None,
    ) -> Verdict:
        """`scored`: the judgment whose scores (and re-measured champion) the record gives;
        `last`: the latest judgment, whose champion was the one to beat."""
        remeasured, scores = scored.remeasured, scored.scores
        return cls(decision, reason, candidate, last.champion, remeasured, scores, parity)


def _version(champion: Champion | None) -> str | None:
    return champion.version if champion else None


def register(inputs: RegisterInputs) -> Decision:
    """Settle what killed registers left, decide (and promote if warranted), then make the local
    BentoML store serve the champion; returns the record for champion.json."""
    params = inputs.params
    experiment_id = use_experiment(params.mlflow.experiment_name)
    client = MlflowClient()
    name = params.mlflow.registered_model_name
    with (
        promotion_lock(tracking_uri()) as lock,
        tempfile.TemporaryDirectory(prefix="register-") as tmp,
    ):
        settle_leftovers(client, name, locked=lock is not None)
        pipeline_run = inputs.pipeline_run()
        verdict = decide_and_promote(client, inputs, experiment_id, pipeline_run, Path(tmp))
        served = sync_bentoml_store(client, params, Path(tmp) / "sync")
        champion = served_champion(client, name, served)
    return Decision(
        decision=verdict.decision,
        reason=verdict.reason,
        chosen_by=CHOSEN_BY,
        candidate=verdict.candidate,
        champion=champion,
        previous_champion=verdict.previous_champion,
        champion_remeasured=verdict.champion_remeasured,
        pipeline_run=pipeline_run,
        gate=params.register.model_dump(),
        parity=verdict.parity,
        served=served,
        scores=verdict.scores,
    )


def settle_leftovers(client: MlflowClient, name: str, locked: bool) -> None:
    """Settle the versions killed registers and rollbacks left, saying what was done."""
    for done in repair(client, name, locked=locked):
        # stdout, beside the result: what this register did (people and tests read it there)
        print(f"register: settled {name} {done} (left by a killed register or rollback)")


def decide_and_promote(
    client: MlflowClient,
    inputs: RegisterInputs,
    experiment_id: str,
    pipeline_run: dict[str, Any],
    workdir: Path,
) -> Verdict:
    """Judge the best validated run against the champion; promote it if the gate passes and its
    exports pass parity."""
    params = inputs.params
    judge = Judge(
        client,
        params,
        experiment_id,
        load_split(inputs.data / SPLIT_FILES["val"]),
        FeedbackSlice.load(inputs.data / FEEDBACK_SLICE),
        Measurer(workdir / "measured"),
        inputs.allow_rolled_back,
    )
    decided = judge.now()
    if not decided.promote:
        return Verdict.kept(decided)
    claim(client, params.mlflow.registered_model_name)
    predictions = evaluated_predictions(decided.candidate, inputs, pipeline_run, workdir)
    test = load_split(inputs.data / SPLIT_FILES["test"])
    exports = check_exports(decided.candidate, predictions, test, workdir)
    rechecked = promote(client, params, decided, exports, judge, workdir)
    return Verdict.after_promotion(decided, rechecked, exports.parity)


def evaluated_predictions(
    candidate: Candidate, inputs: RegisterInputs, pipeline_run: dict[str, Any], workdir: Path
) -> pd.DataFrame:
    """evaluate's predictions for the candidate's model: this pipeline run's file, or the table
    evaluate logged to an older run."""
    if candidate.run_id != pipeline_run["run_id"]:
        return pd.read_csv(run_artifact(candidate.run_id, "evaluation/predictions.csv", workdir))
    if abs(pipeline_run["test_accuracy"] - candidate.test_accuracy) > 1e-9:
        raise RegisterError(f"{inputs.metrics} disagrees with MLflow on run {candidate.run_id}")
    return pd.read_csv(inputs.predictions)


def served_champion(client: MlflowClient, name: str, served: str | None) -> Champion | None:
    """The champion as it stands now (another register may have moved it since: a shared
    server), tagged with the BentoML model that serves it if no machine tagged one yet."""
    version = current_champion(client, name)
    if version is None:
        return None
    if "bento_model" not in version.tags and served:
        # The promoting machine's import (a teammate's own import has another tag).
        client.set_model_version_tag(name, version.version, "bento_model", served)
        version = client.get_model_version(name, version.version)
    return champion_summary(client, version)


def import_champion(params: Params) -> str | None:
    """`--import-only`: the local BentoML store serves the MLflow @champion; decide nothing."""
    use_experiment(params.mlflow.experiment_name)  # checks the tracking server answers
    with tempfile.TemporaryDirectory(prefix="register-") as tmp:
        return sync_bentoml_store(MlflowClient(), params, Path(tmp))
