"""Promoting a candidate the gate passed: its checked exports, a model version, the alias move.

In order:
1. `claim`: the registered model (created if new) records who is promoting, before any export;
2. `check_exports`: the candidate's .keras file (its recorded SHA-256), its ONNX and explainer
   exports, which must reproduce evaluate's predictions on every test image;
3. `promote`: a model version tagged `promotion=in_progress` (step `registered`), its exports
   logged to the run and read back (step `before-alias`), a judgment of the registry as it is
   now, and, if that still promotes this candidate, the `champion` alias moved (step
   `alias-moved`, the commit point) and the version tagged `promoted`.

MLflow has no transactions. On a local store the promotion lock makes this one register at a
time; on a shared server, judging again just before moving the alias catches a register that
promoted meanwhile (the window left is the few milliseconds between that check and the move).
A version whose promotion stopped is tagged `superseded` or `failed`; one a killed register left
`in_progress` is settled by the next (registry.py's `repair`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.core.inference import MODEL_FILE, ONNX_FILE, file_sha256
from pipeline.core.params import Params
from pipeline.promotion.export import (
    EXPLAINER_JSON,
    EXPLAINER_ONNX,
    export_explainer,
    export_onnx,
)
from pipeline.promotion.judge import Judge, Judgement
from pipeline.promotion.parity import explainer_parity, parity_check
from pipeline.promotion.record import (
    ALIAS,
    PROMOTION,
    PROMOTION_OWNER,
    REPLACED_VERSION,
    SHA256_KEYS,
    Candidate,
    exports_dir,
)
from pipeline.promotion.registry import (
    checked_artifact,
    checked_download,
    model_card,
    this_process,
)
from pipeline.promotion.steps import reached
from pipeline.shared.dataset import Split

# A version's lineage tags copied from the candidate (besides each served file's SHA-256).
LINEAGE = (
    "run_id",
    "val_accuracy",
    "test_accuracy",
    "val_data_hash",
    "model_sha256",
    "git_commit",
    "data_hash",
)


@dataclass(frozen=True)
class CheckedExports:
    """The candidate's files as the service will get them, each checked, and the parity record
    its exports passed."""

    files: dict[str, Path]  # file name in the model (MODEL_FILE, ONNX_FILE, ...) -> path
    parity: dict[str, Any]

    @property
    def exports(self) -> dict[str, Path]:
        """The files promotion logs to the run (all but the .keras file, which is the model)."""
        return {f: path for f, path in self.files.items() if f != MODEL_FILE}


def claim(client: MlflowClient, name: str) -> None:
    """Record on the registered model (created if new) who is promoting, before any export: a
    user without EDIT permission on it fails here, in a second, having changed nothing."""
    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name)
    client.set_registered_model_tag(name, "last_promotion_by", this_process())


def check_exports(
    candidate: Candidate, predictions: pd.DataFrame, test: Split, workdir: Path
) -> CheckedExports:
    """The candidate's .keras file (hash-checked), its ONNX and explainer exports, and the parity
    record they passed against `predictions` (evaluate's, on `test`)."""
    model_file = checked_download(
        candidate.model_uri, candidate.model_sha256, workdir / "candidate"
    )
    onnx_file = export_onnx(model_file, workdir / ONNX_FILE)
    parity, onnx_proba = parity_check(model_file, onnx_file, predictions, test)
    explainer = export_explainer(model_file, workdir / "explainer", test)
    parity |= explainer_parity(explainer, onnx_proba, test)
    files = {
        MODEL_FILE: model_file,
        ONNX_FILE: onnx_file,
        EXPLAINER_ONNX: explainer.onnx_file,
        EXPLAINER_JSON: explainer.json_file,
    }
    return CheckedExports(files, parity)


def still_promotes(judged: Judgement, candidate: Candidate) -> bool:
    """Whether a later judgment still promotes the same candidate."""
    return judged.candidate.run_id == candidate.run_id and judged.promote


def promote(
    client: MlflowClient,
    params: Params,
    decided: Judgement,
    exports: CheckedExports,
    judge: Judge,
    workdir: Path,
) -> Judgement:
    """Register a version of `decided`'s candidate, log its exports into a folder of its own in
    the run, judge again (`judge.now()`) and move the alias if that still promotes it. Returns
    that last judgment: the one the alias move rested on, or the one that stopped it."""
    name = params.mlflow.registered_model_name
    candidate = decided.candidate
    lineage = {k: str(getattr(candidate, k)) for k in LINEAGE}
    lineage |= {SHA256_KEYS[f]: file_sha256(path) for f, path in exports.exports.items()}
    status = {PROMOTION: "in_progress", PROMOTION_OWNER: this_process()}
    version = mlflow.register_model(candidate.model_uri, name, tags=lineage | status).version
    reached("registered")
    try:
        card = _prepare_version(client, name, version, decided, exports, lineage, workdir)
        reached("before-alias")
        rechecked = judge.now()
        if not still_promotes(rechecked, candidate):
            client.set_model_version_tag(name, version, PROMOTION, "superseded")
            return rechecked
        # What a rollback goes back to: the champion this alias move replaces.
        replaced = rechecked.champion.version if rechecked.champion else "none"
        client.set_model_version_tag(name, version, REPLACED_VERSION, replaced)
        client.set_registered_model_alias(name, ALIAS, version)
    except BaseException:
        with contextlib.suppress(Exception):  # the error that stopped it is the one to report
            client.set_model_version_tag(name, version, PROMOTION, "failed")
        raise
    reached("alias-moved")
    _mark_promoted(client, name, version, card)
    return rechecked


def _prepare_version(
    client: MlflowClient,
    name: str,
    version: str,
    decided: Judgement,
    exports: CheckedExports,
    lineage: dict[str, str],
    workdir: Path,
) -> str:
    """Check the registered file, log the exports to the run (each read back and checked), tag
    where they are and describe the version; returns its model card."""
    candidate = decided.candidate
    # What is served must be what is registered: the version's file, identical to the checked one.
    checked_download(f"models:/{name}/{version}", candidate.model_sha256, workdir / "registered")
    folder = exports_dir(version)
    for f, path in exports.exports.items():
        client.log_artifact(candidate.run_id, str(path), folder)
        checked_artifact(
            candidate.run_id, f"{folder}/{f}", lineage[SHA256_KEYS[f]], workdir / "logged"
        )
    client.set_model_version_tag(name, version, "exports_dir", folder)
    card = model_card(candidate, decided.run, version, name, workdir / "card")
    client.update_model_version(name, version, description=card)
    return card


def _mark_promoted(client: MlflowClient, name: str, version: str, card: str) -> None:
    """After the alias move: the version's promotion is done; the registered model says so."""
    client.set_model_version_tag(name, version, PROMOTION, "promoted")
    client.update_registered_model(
        name,
        description="Fashion-MNIST classifier trained by this project's DVC pipeline; "
        f"`@{ALIAS}` is the version `register` promoted (chosen on validation accuracy).\n\n"
        f"Latest promoted: version {version}.\n\n{card}",
    )
