"""Where MLflow runs go, and the lineage tags every run carries.

Tracking URI: MLFLOW_TRACKING_URI when set; otherwise a sqlite store at the repository root
(mlflow.db, artifacts in mlruns/). The root comes from DVC_ROOT when DVC sets it, because
`dvc exp run --temp/--queue` runs stages in a throwaway copy where a relative path would lose the runs.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
import numpy as np
import yaml
from mlflow.exceptions import MlflowException

from pipeline.core.fashion_mnist import RAW_FILES
from pipeline.core.inference import MODEL_FILE
from pipeline.shared.dataset import Split, content_hash

# MLflow retries a dead server for minutes by default; fail fast instead.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
# Keep the stages' logs readable: no download progress bars.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow 3's UI opens an experiment on its GenAI views unless it is tagged as model training.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
DIGEST_CHARS = 32  # MLflow stores a dataset digest in at most 36 characters


class TrackingUnavailable(RuntimeError):
    """The tracking server does not answer; the message names the URI."""


CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def shown(uri: str) -> str:
    """A tracking URI fit for messages: a password written into it (http://user:pw@host) is hidden."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


@contextmanager
def tracking_access() -> Iterator[None]:
    """MLflow's 401 and 403 (a server with authentication) as TrackingUnavailable, naming the
    server, the user and what to set; credentials come from the environment only."""
    try:
        yield
    except MlflowException as err:
        user = os.environ.get(CREDENTIALS[0])
        server = shown(tracking_uri())
        if err.error_code == "UNAUTHENTICATED":
            who = f"user {user!r}" if user else f"no user ({CREDENTIALS[0]} is not set)"
            raise TrackingUnavailable(
                f"MLflow tracking server {server} refused the credentials of {who} (HTTP 401): "
                f"set {' and '.join(CREDENTIALS)} to an account on that server"
            ) from None
        if err.error_code == "PERMISSION_DENIED":
            endpoint = err.message.split(" failed", 1)[0].removeprefix("API request to endpoint ")
            raise TrackingUnavailable(
                f"MLflow tracking server {server} denied user {user!r} ({endpoint}: HTTP 403): "
                "this needs EDIT permission on the experiment or registered model, which its "
                "owner or an admin grants"
            ) from None
        raise


class ModelFileError(RuntimeError):
    """An MLflow model is not the Keras model this project logs; the message says why."""


def project_root() -> Path:
    """DVC_ROOT when running under DVC, else the current directory."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or sqlite:///<root>/mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def check_server(uri: str, timeout: float = 5.0) -> None:
    """For an HTTP tracking URI, make sure the server answers its health check within `timeout`."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        parts = urlsplit(uri)  # /health needs no credentials, and urllib takes none in the URL
        bare = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))
        with urllib.request.urlopen(f"{bare.rstrip('/')}/health", timeout=timeout) as resp:
            resp.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingUnavailable(
            f"MLflow tracking server {shown(uri)} is not reachable ({reason}); start it or set "
            "MLFLOW_TRACKING_URI to a running server"
        ) from None


def use_experiment(name: str) -> str:
    """Point MLflow at the tracking URI and the named experiment (created if new); returns its id."""
    uri = tracking_uri()
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        for key, value in EXPERIMENT_TAGS.items():
            if experiment.tags.get(key) != value:  # an experiment made before the tag existed
                mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        # Keep artifacts beside the database, not wherever the stage happens to run.
        location = (project_root() / "mlruns").as_uri()
    return mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)


def download_keras_file(model_uri: str, dest: Path) -> Path:
    """Download an MLflow Keras model (models:/..., runs:/...) and return its .keras file."""
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest)))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"].get("keras")
    if flavor is None:
        raise ModelFileError(f"{model_uri} is not a Keras model (no keras flavor in its MLmodel)")
    path = local / flavor.get("data", "data") / MODEL_FILE
    if not path.is_file():
        raise ModelFileError(f"{model_uri} has no {path.relative_to(local)}")
    return path


def git_commit(root: Path | None = None) -> str:
    """HEAD's commit of the repository, or 'unknown' outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root or project_root(),
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lineage_tags(train: Split, val: Split, seed: int) -> dict[str, str]:
    """Tags tying a run to its code, data and DVC experiment.

    `val_data_hash` says which validation data the run's val_* metrics were measured on: only
    runs with the same one are compared when `register` chooses a champion.
    """
    return {
        "git_commit": git_commit(),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "data_hash": content_hash(train, val),
        "val_data_hash": content_hash(val),
        "seed": str(seed),
    }


def log_split(
    split: Split, context: str, raw_split: str, provenance: Mapping[str, Mapping[str, str]]
) -> None:
    """Log a split as an MLflow dataset input of the active run (its Dataset column in the UI).

    digest: the arrays' content hash; source: the mirror its raw IDX files (those of `raw_split`,
    train or test) came from; input tags: their SHA-256s. `provenance` is fetch's sources.json
    (file -> {mirror, sha256}).
    """
    files = {name: provenance[name] for name in RAW_FILES[raw_split]}
    with warnings.catch_warnings():
        # MLflow registers its local-path source under two URI schemes ("" and "file") and warns
        # that a directory "can be interpreted in multiple ways": both are the same class.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = mlflow.data.from_numpy(
            np.ascontiguousarray(split.x),
            targets=np.ascontiguousarray(split.y),
            source=files[RAW_FILES[raw_split][0]]["mirror"],  # a URL or a local directory
            name=f"fashion-mnist-{context}",
            digest=content_hash(split)[:DIGEST_CHARS],
        )
    tags = {f"sha256:{name}": p["sha256"] for name, p in files.items()}
    mlflow.log_input(dataset, context=context, tags=tags)
