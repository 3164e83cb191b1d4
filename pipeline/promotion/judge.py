"""Judging: the best validated run against the current champion, through both sides of the gate.

A judgment reads the registry as it is now (the champion, the runs a rollback barred) and the
experiment's runs, then scores both models on the two data sets the gate compares them on:
- the validation split: the candidate's accuracy as its run recorded it, the champion's as its
  version records it, or re-measured here when it was validated on other data;
- the feedback slice (prepare's feedback.npz: corrections people sent, held out of
  training): both models measured here, the same way (Keras, this split), each model file
  checked against the SHA-256 its run recorded. An empty or absent slice is not checked.

Register judges twice (once to decide, once right before the alias move); `Measurer` downloads
and scores each model once for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Run

from pipeline.core.fashion_mnist import IMAGE_SIZE
from pipeline.core.params import Params
from pipeline.promotion.choice import best_run, candidate_of, decide, decide_feedback
from pipeline.promotion.record import Candidate, Champion, RegisterError
from pipeline.promotion.registry import (
    champion_summary,
    checked_download,
    current_champion,
    rolled_back_runs,
)
from pipeline.shared.dataset import Split, content_hash
from pipeline.shared.keras_runtime import Classifier
from pipeline.shared.tracking import download_keras_file


@dataclass(frozen=True)
class Judgement:
    """The registry as one register saw it: the best validated run, the champion and the gate."""

    candidate: Candidate
    run: Run
    champion: Champion | None
    promote: bool
    reason: str
    remeasured: dict[str, Any] | None
    scores: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FeedbackSlice:
    """The held-out corrections: images, the labels people gave them; `note` says why there are
    none (an empty slice, or no file)."""

    split: Split
    note: str

    @classmethod
    def load(cls, path: Path) -> FeedbackSlice:
        """prepare's feedback.npz (x uint8 (N, 28, 28), y (N,), sha256 (N,)); N may be 0. A
        missing file is an empty slice: the stage lists it as a dependency, so under DVC it
        exists; a direct run on a folder without one (older prepared data) checks nothing."""
        empty = Split(np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8), np.zeros(0, np.int64))
        if not path.is_file():
            return cls(empty, f"absent ({path} not found)")
        with np.load(path) as f:
            missing = {"x", "y"} - set(f.files)
            if missing:
                raise RegisterError(f"{path}: no array {' or '.join(sorted(missing))}")
            x, y = f["x"], f["y"]
        if x.dtype != np.uint8 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or len(x) != len(y):
            raise RegisterError(
                f"{path}: images {x.dtype} {x.shape} and labels {y.shape} are not a slice of "
                f"uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE}) images with N labels"
            )
        return cls(Split(x, y.astype(np.int64)), "empty" if len(y) == 0 else "")


class Measurer:
    """Accuracies of models on splits: each model downloaded (hash-checked when its SHA-256 is
    known), loaded and scored on each split once, however often it is asked."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._models: dict[str, Classifier] = {}
        self._scores: dict[tuple[str, str], float] = {}

    def accuracy(self, model_uri: str, sha256: str, split: Split) -> float:
        key = (model_uri, content_hash(split))
        if key not in self._scores:
            if model_uri not in self._models:
                import pipeline.training.quiet_tensorflow  # noqa: F401 (TensorFlow, quietly)

                dest = self.workdir / f"model-{len(self._models)}"
                path = (
                    download_keras_file(model_uri, dest)
                    if sha256 == "unknown"  # a version registered by hand or by older code
                    else checked_download(model_uri, sha256, dest)
                )
                self._models[model_uri] = Classifier.from_file(path)
            predicted = self._models[model_uri].predict_proba(split.x).argmax(axis=1)
            self._scores[key] = float((predicted == split.y).mean())
        return self._scores[key]


@dataclass
class Judge:
    """Judges the best validated run against the champion: `now()` reads the registry and the
    experiment as they are at that moment (register asks twice: to decide, and right before the
    alias move)."""

    client: MlflowClient
    params: Params
    experiment_id: str
    val: Split
    feedback: FeedbackSlice
    measurer: Measurer
    allow_rolled_back: bool = False  # register --allow-rolled-back

    def now(self) -> Judgement:
        """The best validated run (rolled-back runs passed over) against the champion, now."""
        name = self.params.mlflow.registered_model_name
        val_data_hash = content_hash(self.val)
        version = current_champion(self.client, name)
        champion = champion_summary(self.client, version) if version else None
        barred = self.barred_runs(champion)
        slice_hash = content_hash(self.feedback.split) if len(self.feedback.split) else None
        best, passed_over = best_run(
            self.client, self.experiment_id, val_data_hash, frozenset(barred), slice_hash
        )
        if best is None:
            raise RegisterError(
                f"experiment {self.params.mlflow.experiment_name!r} has no evaluated run "
                f"validated on this validation data (val_data_hash {val_data_hash[:12]})"
                + (
                    f" but runs a rollback took @champion from ({', '.join(barred)}), passed "
                    "over: register --allow-rolled-back lets them compete"
                    if passed_over
                    else ""
                )
            )
        candidate = candidate_of(best)
        note = "".join(
            f"; run {r.info.run_id} (validation accuracy {r.data.metrics['best_val_accuracy']:.4f})"
            f" ranks above it, but its version {barred[r.info.run_id]} was rolled back: no "
            "candidate unless register runs with --allow-rolled-back"
            for r in passed_over
        )
        scores = {"validation": {"samples": len(self.val), "candidate": candidate.val_accuracy}}
        if champion and champion.run_id == candidate.run_id:
            scores["validation"]["champion"] = candidate.val_accuracy
            why = f"the best run is already the champion (version {champion.version}){note}"
            return Judgement(candidate, best, champion, False, why, None, scores)
        champion_acc, remeasured = None, None
        if champion is not None:
            champion_acc = champion.val_accuracy
            if champion.val_data_hash != val_data_hash or champion_acc is None:
                champion_acc, remeasured = self.remeasured(champion)
        scores["validation"]["champion"] = champion_acc
        scores["feedback"] = self.feedback_scores(candidate, champion)
        fb = scores["feedback"]
        on_val, val_why = decide(candidate.val_accuracy, champion_acc, self.params.register)
        on_fb, fb_why = decide_feedback(
            fb["candidate"], fb["champion"], fb["samples"], self.params.register, self.feedback.note
        )
        why = f"{val_why}; {fb_why}{note}"
        return Judgement(candidate, best, champion, on_val and on_fb, why, remeasured, scores)

    def barred_runs(self, champion: Champion | None) -> dict[str, str]:
        """Runs a rollback took @champion from (run id -> version), passed over unless
        --allow-rolled-back; the champion's own run never is."""
        if self.allow_rolled_back:
            return {}
        name = self.params.mlflow.registered_model_name
        return rolled_back_runs(self.client, name, champion.run_id if champion else None)

    def remeasured(self, champion: Champion) -> tuple[float, dict[str, Any]]:
        """A champion validated on other data, measured on the candidate's validation split: its
        accuracy there and the record of why."""
        acc = self.measurer.accuracy(champion_uri(champion), champion.model_sha256, self.val)
        val_data_hash = content_hash(self.val)
        return acc, {
            "reason": "the champion was validated on other data "
            f"(val_data_hash {champion.val_data_hash[:12]}, this split {val_data_hash[:12]})",
            "val_accuracy_before": champion.val_accuracy,
            "val_accuracy": acc,
            "val_data_hash": val_data_hash,
        }

    def feedback_scores(self, candidate: Candidate, champion: Champion | None) -> dict[str, Any]:
        """Both models' accuracy on the feedback slice (None: not measured, no images)."""
        split = self.feedback.split
        scores: dict[str, Any] = {"samples": len(split), "candidate": None, "champion": None}
        if not len(split):
            return scores | {"note": self.feedback.note}
        scores["data_hash"] = content_hash(split)
        scores["candidate"] = self.measurer.accuracy(
            candidate.model_uri, candidate.model_sha256, split
        )
        if champion is not None:
            scores["champion"] = self.measurer.accuracy(
                champion_uri(champion), champion.model_sha256, split
            )
        return scores


def champion_uri(champion: Champion) -> str:
    return f"models:/{champion.model_name}/{champion.version}"


def describe_scores(scores: dict[str, Any] | None) -> str:
    """One line: both models' accuracies on validation and on the feedback slice."""
    if not scores:
        return "scores: none"

    def pair(part: dict[str, Any]) -> str:
        return ", ".join(
            f"{who} {'-' if part.get(who) is None else format(part[who], '.4f')}"
            for who in ("candidate", "champion")
        )

    val = scores["validation"]
    line = f"scores: validation ({val['samples']} images) {pair(val)}"
    fb = scores.get("feedback")
    if fb is None:
        return line
    if not fb["samples"]:
        return f"{line}; feedback slice {fb.get('note', 'empty')}"
    return f"{line}; feedback slice ({fb['samples']} images) {pair(fb)}"
