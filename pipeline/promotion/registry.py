"""The MLflow model registry: the `@champion` version and its summary, hash-checked downloads of
a version's files, the model card, one promotion (or rollback) at a time on a local store, the
runs a rollback bars from promotion, and settling what killed registers and rollbacks left."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import pandas as pd
import psutil
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pipeline.core.inference import ONNX_FILE, file_sha256
from pipeline.promotion.record import (
    ALIAS,
    BARRED,
    PROMOTION,
    PROMOTION_OWNER,
    RESTORED_KEYS,
    ROLLBACK_OWNER,
    ROLLED_BACK,
    ROLLED_BACK_KEYS,
    Candidate,
    Champion,
    RegisterError,
    exports_dir,
)
from pipeline.shared.tracking import download_keras_file

log = logging.getLogger(__name__)


def local_store(uri: str) -> Path | None:
    """The file or directory of a tracking store on this machine (sqlite:///..., file:..., a
    path); None for a tracking server."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        # SQLAlchemy's form: sqlite:///relative.db, sqlite:////absolute.db
        return Path(unquote(uri.removeprefix("sqlite:///")))
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return Path(uri) if parsed.scheme == "" else None


@contextmanager
def promotion_lock(uri: str) -> Iterator[Path | None]:
    """Hold the store's promotion lock: one register at a time decides and promotes on a local
    store. Registers that overlap (`dvc queue start -j 2`) would otherwise each decide against the
    champion they read and log their exports into the same run. The lock is a file beside the
    store (`<store>.promotion.lock`), released by the kernel when the process ends, however it
    ends. A tracking server has no lock here: nothing is held (yields None)."""
    store = local_store(uri)
    if store is None:
        yield None
        return
    path = store.with_name(f"{store.name}.promotion.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("register: waiting for another promotion on %s to finish", store)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException as err:
        # No such model: RESOURCE_DOES_NOT_EXIST; a model whose alias was removed (a rollback
        # to "no champion"): INVALID_PARAMETER_VALUE "...alias champion not found".
        if err.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in err.message:
            return None
        # MLflow's basic auth answers 403, not 404, for a registered model that does not exist.
        if err.error_code == "PERMISSION_DENIED" and not client.search_registered_models(
            f"name = '{name}'"
        ):
            return None
        raise


def champion_summary(client: MlflowClient, version: ModelVersion) -> Champion:
    """The champion's identity and metrics, from its version tags (its run's as fallback)."""
    tags = dict(version.tags)
    if version.run_id and not {"val_accuracy", "val_data_hash"} <= tags.keys():
        run = client.get_run(version.run_id)  # a version registered by hand or by older code
        tags.setdefault("val_data_hash", run.data.tags.get("val_data_hash", "unknown"))
        for key, metric in (
            ("val_accuracy", "best_val_accuracy"),
            ("test_accuracy", "test_accuracy"),
        ):
            if key not in tags and metric in run.data.metrics:
                tags[key] = run.data.metrics[metric]

    def number(key: str) -> float | None:
        return None if tags.get(key) is None else float(tags[key])

    return Champion(
        model_name=version.name,
        version=str(version.version),
        run_id=version.run_id,
        val_accuracy=number("val_accuracy"),
        test_accuracy=number("test_accuracy"),
        val_data_hash=tags.get("val_data_hash", "unknown"),
        model_sha256=tags.get("model_sha256", "unknown"),
        onnx_sha256=tags.get("onnx_sha256", "unknown"),
        explainer_onnx_sha256=tags.get("explainer_onnx_sha256", "unknown"),
        explainer_json_sha256=tags.get("explainer_json_sha256", "unknown"),
        git_commit=tags.get("git_commit", "unknown"),
        data_hash=tags.get("data_hash", "unknown"),
        bento_model=tags.get("bento_model"),
        exports_dir=tags.get("exports_dir"),
    )


def checked_download(model_uri: str, expected_sha256: str, dest: Path) -> Path:
    """The .keras file of an MLflow model, refused unless it has the expected SHA-256."""
    path = download_keras_file(model_uri, dest)
    actual = file_sha256(path)
    if actual != expected_sha256:
        raise RegisterError(
            f"{model_uri}: model file sha256 {actual[:12]} is not the {expected_sha256[:12]} "
            "that training recorded and evaluate scored"
        )
    return path


def run_artifact(run_id: str, path: str, dest: Path) -> Path:
    return Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{path}", dst_path=str(dest)))


def checked_artifact(run_id: str, artifact: str, expected_sha256: str, dest: Path) -> Path:
    """An export (model.onnx, ...) logged to a run at promotion, refused unless it has the
    expected SHA-256."""
    path = run_artifact(run_id, artifact, dest)
    if file_sha256(path) != expected_sha256:
        raise RegisterError(f"run {run_id}: {artifact} is not the export register checked")
    return path


def this_process() -> str:
    """host:pid:start-time, naming this register process uniquely (a pid alone gets reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{psutil.Process().create_time()}"


def process_gone(owner: str) -> bool | None:
    """Whether the register named by this_process() has ended; None if it ran on another host."""
    host, pid, start = owner.rsplit(":", 2)
    if host != socket.gethostname():
        return None
    try:
        return str(psutil.Process(int(pid)).create_time()) != start
    except psutil.NoSuchProcess:
        return True


def rolled_back_runs(client: MlflowClient, name: str, champion: str | None) -> dict[str, str]:
    """Runs a rollback took `@champion` from (a version tagged rolled_back pending or true), but
    the `champion` run's: run id -> that version."""
    return {
        v.run_id: str(v.version)
        for v in client.search_model_versions(f"name='{name}'")
        if v.tags.get(ROLLED_BACK) in BARRED and v.run_id and v.run_id != champion
    }


def repair(client: MlflowClient, name: str, locked: bool) -> list[str]:
    """Settle the versions a killed register left `promotion=in_progress`: the `@champion` is
    marked promoted; any other is marked abandoned once its register is known to be gone (it
    ran on this host and has ended, or the store's promotion lock is held: no register can be
    running). One still in progress on another host is left alone. Versions a killed rollback
    left `rolled_back=pending` likewise (rollback.py): no longer `@champion`, the rollback
    happened (true, and the restored version gets its tags); still champion, abandoned.
    Returns what was done."""
    champion = current_champion(client, name)
    done = []
    for version in client.search_model_versions(f"name='{name}'"):
        is_champion = champion is not None and version.version == champion.version
        if version.tags.get(ROLLED_BACK) == "pending":
            if not is_champion:
                done += _rollback_done(client, version, champion)
            elif locked or process_gone(version.tags.get(ROLLBACK_OWNER, "?:0:0")):
                client.set_model_version_tag(name, version.version, ROLLED_BACK, "abandoned")
                done.append(f"version {version.version}: rollback pending -> abandoned")
        if version.tags.get(PROMOTION) != "in_progress":
            continue
        if is_champion:
            status = "promoted"
        elif locked or process_gone(version.tags.get(PROMOTION_OWNER, "?:0:0")):
            status = "abandoned"
        else:
            continue
        client.set_model_version_tag(name, version.version, PROMOTION, status)
        done.append(f"version {version.version}: in_progress -> {status}")
    return done


def _rollback_done(
    client: MlflowClient, left: ModelVersion, champion: ModelVersion | None
) -> list[str]:
    """A rollback that moved the alias off `left` and was killed before it said so."""
    client.set_model_version_tag(left.name, left.version, ROLLED_BACK, "true")
    done = [f"version {left.version}: rollback pending -> true"]
    reason, by, at, to = (left.tags.get(k, "unknown") for k in ROLLED_BACK_KEYS)
    if champion is not None and champion.version == to and champion.tags.get("restored_at") != at:
        mark_restored(client, champion, left.version, reason, by, at)
        done.append(f"version {to}: tagged restored from version {left.version}")
    return done


def mark_restored(
    client: MlflowClient, version: ModelVersion, left: str, reason: str, by: str, at: str
) -> None:
    """Tag the version a rollback made `@champion` again: from which version, why, by whom,
    when; a version once rolled back itself is no longer barred (a rollback chose it)."""
    for key, value in zip(RESTORED_KEYS, (left, reason, by, at), strict=True):
        client.set_model_version_tag(version.name, version.version, key, value)
    if version.tags.get(ROLLED_BACK) in BARRED:
        client.set_model_version_tag(version.name, version.version, ROLLED_BACK, "lifted")


def model_card(candidate: Candidate, run: Run, version: str, name: str, workdir: Path) -> str:
    """The registered version's description (Markdown): what it is, how good, where from, how to use."""
    layers = run_artifact(run.info.run_id, "layer_table.txt", workdir).read_text()
    per_class = pd.read_csv(run_artifact(run.info.run_id, "evaluation/per_class.csv", workdir))
    f1 = "\n".join(f"| {r['class']} | {r['f1']:.3f} |" for _, r in per_class.iterrows())
    metrics = run.data.metrics
    flip = "yes" if run.data.params.get("model.test_time_flip") == "True" else "no"
    return f"""\
Fashion-MNIST CNN (Keras 3). Input: uint8 pixels (N, 28, 28), light on dark; output: the ten
class probabilities (N, 10). Scaling to [0, 1] is built into the model.

| | |
|---|---|
| validation accuracy (chosen by) | {candidate.val_accuracy:.4f} |
| test accuracy (reported only) | {candidate.test_accuracy:.4f} |
| test macro F1 | {metrics.get("test_macro_f1", float("nan")):.4f} |
| parameters | {int(metrics.get("param_count", 0)):,} |
| test-time flip (answers averaged with the mirror image's) | {flip} |
| best epoch | {int(metrics.get("best_epoch", 0))} |
| training run | {run.info.run_id} ({run.info.run_name}) |
| git commit | {candidate.git_commit} |
| data hash (train+val) | {candidate.data_hash} |
| model file sha256 | {candidate.model_sha256} |

Layers (each conv/pool maps n to floor((n + 2p - f) / s) + 1):
```
{layers.rstrip()}
```

| class | test F1 |
|---|---|
{f1}

Use: `mlflow.pyfunc.load_model("models:/{name}/{version}").predict(images_uint8)`,
`mlflow models serve -m models:/{name}@{ALIAS}`, or this project's `bentoml serve`, which runs
the ONNX export logged to the run as `{exports_dir(version)}/{ONNX_FILE}` (same classes on every test image).
"""
