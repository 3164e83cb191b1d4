"""Stage `register`: promote the experiment's best validated run to `@champion`, if it earns it.

The steps, each in its module under pipeline/promotion/:
- choice.py and judge.py: the candidate is the best run validated on the current validation split
  (runs a rollback took `@champion` from excepted, unless --allow-rolled-back); the gate compares
  it with the champion on validation accuracy (a champion validated on other data is first
  re-measured on this split) and on the feedback slice (both measured there; an empty slice is
  not checked); test accuracy is reported, never compared.
- export.py and parity.py: the candidate's logged model file must have the SHA-256 its run
  recorded (the file `evaluate` scored); its ONNX export (the service's runtime) and its explainer
  export must reproduce evaluate's predictions on every test image.
- registry.py: a model version with its lineage tags and model card; the `champion` alias.
- bento_store.py: the champion's files in the BentoML model store, each copy hash-checked.

Promotion registers a model version, logs the checked ONNX files to the run, decides again
against the registry as it is now, tags the version with the champion it replaces (what
`python -m pipeline.rollback` goes back to) and moves the `champion` alias (the commit point),
checking at each step that the bytes are still the same; a candidate that fails anywhere, or that
another register's promotion overtook, leaves the champion untouched. On a local MLflow store one register
at a time decides and promotes (registry.py's `promotion_lock`). The decision and why go to
champion.json (record.py's `Decision`). Whatever was decided, the local BentoML store then serves
the `@champion` (`<serve.bento_model_name>:latest`), imported from MLflow when missing: after a
promotion, on a teammate's machine that shares the MLflow server, or after a register was killed
(`python -m pipeline.register --import-only` does just that; `make serve` runs it). Each step is
announced (steps.py); a killed register's leftovers are settled by the next (registry.py `repair`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.core.inference import MODEL_FILE, ONNX_FILE, file_sha256
from pipeline.core.params import Params, load_params
from pipeline.promotion.bento_store import sync_bentoml_store
from pipeline.promotion.export import (
    EXPLAINER_JSON,
    EXPLAINER_ONNX,
    export_explainer,
    export_onnx,
)
from pipeline.promotion.judge import (
    FEEDBACK_FILE,
    FeedbackSlice,
    Judge,
    Judgement,
    Measurer,
    describe_scores,
)
from pipeline.promotion.parity import explainer_parity, parity_check
from pipeline.promotion.record import (
    ALIAS,
    PROMOTION,
    PROMOTION_OWNER,
    REPLACED_VERSION,
    SHA256_KEYS,
    Candidate,
    Champion,
    Decision,
    RegisterError,
    exports_dir,
)
from pipeline.promotion.registry import (
    champion_summary,
    checked_artifact,
    checked_download,
    current_champion,
    model_card,
    promotion_lock,
    repair,
    run_artifact,
    this_process,
)
from pipeline.promotion.steps import reached
from pipeline.shared.dataset import load_split, write_atomically
from pipeline.shared.tracking import (
    ModelFileError,
    TrackingUnavailable,
    tracking_access,
    tracking_uri,
    use_experiment,
)


def run(
    params: Params,
    metrics_path: Path,
    predictions_path: Path,
    data_dir: Path,
    run_path: Path,
    allow_rolled_back: bool = False,
) -> Decision:
    """Settle what killed registers left, decide (and promote if warranted), then make the local
    BentoML store serve the champion; returns the record written to champion.json."""
    experiment_id = use_experiment(params.mlflow.experiment_name)
    client = MlflowClient()
    name = params.mlflow.registered_model_name
    with (
        promotion_lock(tracking_uri()) as lock,
        tempfile.TemporaryDirectory(prefix="register-") as tmp,
    ):
        for done in repair(client, name, locked=lock is not None):
            print(f"register: settled {name} {done} (left by a killed register or rollback)")
        record = choose(
            client, params, experiment_id, (metrics_path, predictions_path, data_dir, run_path),
            Path(tmp), allow_rolled_back,
        )  # fmt: skip
        record.served = sync_bentoml_store(client, params, Path(tmp) / "sync")
        # The champion as it stands now: another register may have moved it since (a shared server).
        version = current_champion(client, name)
        if version is not None and "bento_model" not in version.tags and record.served:
            # The promoting machine's import (a teammate's own import has another tag).
            client.set_model_version_tag(name, version.version, "bento_model", record.served)
            version = client.get_model_version(name, version.version)
        record.champion = champion_summary(client, version) if version else None
    return record


def choose(
    client: MlflowClient,
    params: Params,
    experiment_id: str,
    inputs: tuple[Path, Path, Path, Path],
    workdir: Path,
    allow_rolled_back: bool = False,
) -> Decision:
    """The decision record; promotes the best validated run if it passes the gate and parity."""
    metrics_path, predictions_path, data_dir, run_path = inputs
    pipeline_run = {
        "run_id": json.loads(run_path.read_text())["mlflow_run_id"],
        "test_accuracy": json.loads(metrics_path.read_text())["test_accuracy"],
    }
    val = load_split(data_dir / "val.npz")
    feedback = FeedbackSlice.load(data_dir / FEEDBACK_FILE)
    judge = Judge(
        client, params, experiment_id, val, feedback, Measurer(workdir / "measured"),
        allow_rolled_back,
    )  # fmt: skip
    seen = judge()
    candidate = seen.candidate
    record = Decision(
        decision="kept",
        reason=seen.reason,
        chosen_by="validation accuracy",
        candidate=candidate,
        champion=seen.champion,
        previous_champion=seen.champion,
        champion_remeasured=seen.remeasured,
        pipeline_run=pipeline_run,
        gate=params.register.model_dump(),
        parity=None,
        scores=seen.scores,
    )
    if not seen.promote:
        return record
    claim(client, params.mlflow.registered_model_name)
    if candidate.run_id == pipeline_run["run_id"]:
        if abs(pipeline_run["test_accuracy"] - candidate.test_accuracy) > 1e-9:
            raise RegisterError(f"{metrics_path} disagrees with MLflow on run {candidate.run_id}")
        predictions = pd.read_csv(predictions_path)
    else:  # an older run: evaluate logged its predictions to that run
        predictions = pd.read_csv(
            run_artifact(candidate.run_id, "evaluation/predictions.csv", workdir)
        )
    files, record.parity = checked_exports(candidate, predictions, data_dir, workdir)

    final = promote(client, params, seen, files, workdir, judge)
    record.previous_champion = final.champion
    if final.candidate.run_id == candidate.run_id and final.promote:
        record.decision = "promoted"
        if version_of(final.champion) != version_of(seen.champion):
            record.champion_remeasured = final.remeasured
            record.scores = final.scores
            record.reason = f"{final.reason} (the champion changed while promoting: decided again)"
    else:
        record.decision = "superseded"
        why = final.reason
        if final.candidate.run_id != candidate.run_id:
            why = (
                f"run {final.candidate.run_id} (validation accuracy "
                f"{final.candidate.val_accuracy:.4f}) is now the best validated run"
            )
        record.reason = (
            f"the registry changed while promoting {candidate.run_id}; decided again: {why}"
        )
    return record


def version_of(champion: Champion | None) -> str | None:
    return champion.version if champion else None


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


def checked_exports(
    candidate: Candidate, predictions: pd.DataFrame, data_dir: Path, workdir: Path
) -> tuple[dict[str, Path], dict[str, Any]]:
    """The candidate's .keras file (hash-checked), its ONNX and explainer exports, and the parity
    record they passed: file name in the model -> path, parity."""
    model_file = checked_download(
        candidate.model_uri, candidate.model_sha256, workdir / "candidate"
    )
    test = load_split(data_dir / "test.npz")
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
    return files, parity


def promote(
    client: MlflowClient,
    params: Params,
    seen: Judgement,
    files: dict[str, Path],
    workdir: Path,
    again: Callable[[], Judgement],
) -> Judgement:
    """Register a version, log its ONNX exports into a folder of its own in the run, decide
    `again()` against the registry as it is now, and move the alias if that still promotes it.
    Returns the judgement the alias move rested on (`seen`'s candidate and promote=True if moved).

    MLflow has no transactions. On a local store the promotion lock makes this one register at a
    time; on a shared server, deciding again just before moving the alias catches a register that
    promoted meanwhile (the window left is the few milliseconds between that check and the move).
    The version is tagged `promotion=in_progress` until the alias moves (then `promoted`), or
    `superseded` / `failed`; one a killed register left in progress is settled by `repair`.
    `files`: file name in the model (MODEL_FILE, ONNX_FILE, ...) -> the checked .keras file and
    its parity-checked exports."""
    name = params.mlflow.registered_model_name
    candidate = seen.candidate
    keys = ("run_id", "val_accuracy", "test_accuracy", "val_data_hash", "model_sha256")
    lineage = {k: str(getattr(candidate, k)) for k in (*keys, "git_commit", "data_hash")}
    exports = {f: path for f, path in files.items() if f != MODEL_FILE}
    lineage |= {SHA256_KEYS[f]: file_sha256(path) for f, path in exports.items()}
    status = {PROMOTION: "in_progress", PROMOTION_OWNER: this_process()}
    version = mlflow.register_model(candidate.model_uri, name, tags=lineage | status).version
    reached("registered")
    try:
        # What is served must be what is registered: the version's file, identical to the checked one.
        checked_download(
            f"models:/{name}/{version}", candidate.model_sha256, workdir / "registered"
        )
        folder = exports_dir(version)
        for f, path in exports.items():
            client.log_artifact(candidate.run_id, str(path), folder)
            checked_artifact(
                candidate.run_id, f"{folder}/{f}", lineage[SHA256_KEYS[f]], workdir / "logged"
            )
        client.set_model_version_tag(name, version, "exports_dir", folder)
        card = model_card(candidate, seen.run, version, name, workdir / "card")
        client.update_model_version(name, version, description=card)
        reached("before-alias")
        final = again()
        if final.candidate.run_id != candidate.run_id or not final.promote:
            client.set_model_version_tag(name, version, PROMOTION, "superseded")
            return final
        # What a rollback goes back to: the champion this alias move replaces.
        replaced = final.champion.version if final.champion else "none"
        client.set_model_version_tag(name, version, REPLACED_VERSION, replaced)
        client.set_registered_model_alias(name, ALIAS, version)
    except BaseException:
        with contextlib.suppress(Exception):  # the error that stopped it is the one to report
            client.set_model_version_tag(name, version, PROMOTION, "failed")
        raise
    reached("alias-moved")
    client.set_model_version_tag(name, version, PROMOTION, "promoted")
    client.update_registered_model(
        name,
        description="Fashion-MNIST classifier trained by this project's DVC pipeline; "
        f"`@{ALIAS}` is the version `register` promoted (chosen on validation accuracy).\n\n"
        f"Latest promoted: version {version}.\n\n{card}",
    )
    return final


def import_champion(params: Params) -> str | None:
    """`--import-only`: the local BentoML store serves the MLflow @champion; decide nothing."""
    use_experiment(params.mlflow.experiment_name)  # checks the tracking server answers
    with tempfile.TemporaryDirectory(prefix="register-") as tmp:
        return sync_bentoml_store(MlflowClient(), params, Path(tmp))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics", type=Path, default=Path("reports/eval/metrics.json"))
    parser.add_argument("--predictions", type=Path, default=Path("reports/eval/predictions.csv"))
    parser.add_argument(
        "--data", type=Path, default=Path("data/prepared"), help="prepared .npz splits"
    )
    parser.add_argument(
        "--run", type=Path, default=Path("reports/train/run.json"), help="train's run id"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/register/champion.json"))
    parser.add_argument(
        "--import-only",
        action="store_true",
        help="only bring the MLflow @champion into the local BentoML store (for `make serve`)",
    )
    parser.add_argument(
        "--allow-rolled-back",
        action="store_true",
        help="let runs a rollback took @champion from be candidates again (this run only)",
    )
    args = parser.parse_args()
    params = load_params(args.params)
    try:
        with tracking_access():
            if args.import_only:
                served = import_champion(params)
                print(f"register: serving {served or 'nothing: there is no @champion yet'}")
                return
            record = run(
                params, args.metrics, args.predictions, args.data, args.run, args.allow_rolled_back
            )
    except (TrackingUnavailable, RegisterError, ModelFileError) as err:
        sys.exit(f"register failed: {err}")
    # A register killed while writing leaves the previous champion.json, never half of one.
    write_atomically(args.out, lambda tmp: tmp.write_text(record.to_json()))
    champion = record.champion
    where = (
        f"{champion.model_name} v{champion.version} ({champion.bento_model})"
        if champion
        else "none"
    )
    print(f"register: {record.decision}: {record.reason}")
    print(f"{describe_scores(record.scores)}\nchampion: {where}")
    print(f"BentoML store serves: {record.served}")


if __name__ == "__main__":
    main()
