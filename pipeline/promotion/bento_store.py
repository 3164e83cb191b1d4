"""The BentoML model store: `<serve.bento_model_name>:latest` holds the `@champion`'s files
(.keras, its ONNX export and explainer), each copy checked against the SHA-256 MLflow recorded."""

from __future__ import annotations

import shutil
from pathlib import Path

from mlflow import MlflowClient

from pipeline.core.fashion_mnist import CLASS_NAMES
from pipeline.core.inference import (
    MODEL_FILE,
    ONNX_FILE,
    altered_files,
    file_sha256,
)
from pipeline.core.params import Params
from pipeline.promotion.export import EXPLAINER_JSON, EXPLAINER_ONNX
from pipeline.promotion.record import EXPORTS, SHA256_KEYS, Champion, RegisterError
from pipeline.promotion.registry import (
    champion_summary,
    checked_artifact,
    checked_download,
    current_champion,
)
from pipeline.promotion.steps import reached


def save_to_bentoml(bento_name: str, champion: Champion, files: dict[str, Path]) -> str:
    """A new BentoML model (it becomes `<bento_name>:latest`) holding the champion's .keras file,
    its ONNX export, its explainer (when it has one) and its identity as labels; returns its tag.

    BentoML builds it in a temporary folder and copies it into the store on leaving `create`, so a
    register killed before then leaves the store as it was; one killed during the copy leaves a
    partial folder that `latest` does not point at, which the next sync deletes."""
    import bentoml

    labels = {
        "mlflow_model_name": champion.model_name,
        "mlflow_model_version": champion.version,
        "mlflow_run_id": champion.run_id,
        "val_accuracy": f"{champion.val_accuracy:.4f}",
        "test_accuracy": f"{champion.test_accuracy:.4f}",
        "model_sha256": champion.model_sha256,
        "onnx_sha256": champion.onnx_sha256,
        "git_commit": champion.git_commit,
        "data_hash": champion.data_hash,
    }
    metadata = {
        "val_accuracy": float(champion.val_accuracy),
        "test_accuracy": float(champion.test_accuracy),
        "class_names": list(CLASS_NAMES),
        "model_file": MODEL_FILE,
        "onnx_file": ONNX_FILE,
    }
    if EXPLAINER_ONNX in files:  # the service's /explain; without it, /explain answers 503
        metadata |= {"explainer_onnx": EXPLAINER_ONNX, "explainer_json": EXPLAINER_JSON}
        metadata |= {SHA256_KEYS[f]: champion.sha256(f) for f in EXPORTS}
    with bentoml.models.create(bento_name, labels=labels, metadata=metadata) as bm:
        for name, path in files.items():
            shutil.copyfile(path, bm.path_of(name))
            if file_sha256(bm.path_of(name)) != champion.sha256(name):
                raise RegisterError(f"the copy of {name} in the BentoML store differs")
        reached("bento-import")
    return str(bm.tag)


def remove_broken(bento_name: str) -> list[str]:
    """Delete this name's models that a killed import left broken (a folder without model.yaml,
    or files that are not what their labels say): they would break `bentoml models list`, and
    must never be served. Returns the versions deleted."""
    import bentoml
    from bentoml._internal.configuration.containers import BentoMLContainer

    # The store's folder: BENTOML_HOME (or BentoML's configured home) / models / <name>
    folder = Path(BentoMLContainer.bentoml_home.get()) / "models" / bento_name
    removed = []
    for path in sorted(p for p in folder.glob("*") if p.is_dir()):
        try:
            info = bentoml.models.get(f"{bento_name}:{path.name}").info
            broken = bool(altered_files(path, info.labels, info.metadata))
        except bentoml.exceptions.BentoMLException:  # no model.yaml, or one it cannot read
            broken = True
        if broken:
            shutil.rmtree(path)
            removed.append(path.name)
    latest = folder / "latest"
    if removed and latest.is_file() and latest.read_text().strip() in removed:
        latest.unlink()  # BentoML re-creates it from the newest model left
    return removed


def sync_bentoml_store(client: MlflowClient, params: Params, workdir: Path) -> str | None:
    """Make the local BentoML store's `<serve.bento_model_name>:latest` the MLflow `@champion`,
    importing it (hash-checked) when it is missing, e.g. on a teammate's machine, or when `latest`
    is another model (a register killed between moving the alias and importing); its tag."""
    import bentoml

    name = params.serve.bento_model_name
    # stdout, beside register's result: what it changed in the store (people and tests read it)
    for broken in remove_broken(name):
        print(f"register: deleted {name}:{broken} from the BentoML store: an unfinished import")
    version = current_champion(client, params.mlflow.registered_model_name)
    if version is None:
        return None
    champion = champion_summary(client, version)
    try:
        latest = bentoml.models.get(f"{name}:latest")
    except bentoml.exceptions.NotFound:
        latest = None
    wanted = {  # the labels that say which champion a BentoML model holds
        "mlflow_model_name": champion.model_name,
        "mlflow_model_version": champion.version,
        "model_sha256": champion.model_sha256,
        "onnx_sha256": champion.onnx_sha256,
    }
    if latest is not None and all(latest.info.labels.get(k) == v for k, v in wanted.items()):
        return str(latest.tag)
    files = served_files(champion, workdir / "import")
    tag = save_to_bentoml(name, champion, files)
    uri = f"models:/{champion.model_name}/{champion.version}"
    print(f"register: imported the champion ({uri}) into the BentoML store as {tag}")
    return tag


def served_files(champion: Champion, dest: Path) -> dict[str, Path]:
    """A version's files as the service needs them (.keras, ONNX export, explainer), downloaded
    and each checked against the SHA-256 its version records: file name -> path."""
    if champion.onnx_sha256 == "unknown":
        raise RegisterError(
            f"{champion.model_name} v{champion.version} has no ONNX export "
            "(promoted by an older register): promote a new run to serve it"
        )
    uri = f"models:/{champion.model_name}/{champion.version}"
    files = {MODEL_FILE: checked_download(uri, champion.model_sha256, dest)}
    for f in EXPORTS:  # the explainer is missing for champions promoted before it existed
        if champion.sha256(f) != "unknown":
            files[f] = checked_artifact(
                champion.run_id, champion.artifact(f), champion.sha256(f), dest
            )
    return files
