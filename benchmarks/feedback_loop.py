"""The loop, measured: a shifted stream, corrections through /feedback, the pipeline's own
commands, and the accuracy before and after.

The shift (harness/photos.py): test items photographed on a light, uneven background, 40-75% of
the frame, off-centre, as JPEGs sent to /classify. The stream is made of test images 0-4,999;
corrections come from its first 4,000, the held-out stream is the last 1,000; the original test
accuracy is measured on test images 5,000-9,999, which no correction comes from.

For each N of --corrections, in a copy of --workspace (a checkout where `make repro` ran: its data,
MLflow store and BentoML model store are copied, never changed) and for each --init:
1. `bentoml serve` of the champion; accuracy on the held-out stream and on the original test half;
2. N corrections sent to POST /feedback by prediction_id, from four sources (annotators);
3. the documented commands: `dvc repro feedback`, `python -m pipeline.feedback review
   --accept-all`, then `dvc repro` with train.init and prepare.feedback.repeat set: the feedback
   stage curates, prepare mixes the corrections in, train retrains (from scratch, or fine-tunes
   the champion), evaluate scores the feedback slice, register's gate decides;
4. the champion after the gate served again and measured the same way.

    python benchmarks/feedback_loop.py --workspace ../fresh-clone [--corrections 250 1000 4000]

Writes the `feedback` section of benchmarks/results/<date>-<machine>.json; docs/benchmarks.md's
table comes from it (benchmarks/tables.py). Takes a retraining per N and init: an hour or more.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import yaml

from harness.models import bento_model
from harness.photos import photograph
from harness.results import RESULTS_DIR, Measurement, feedback_rows
from harness.servers import free_port, start_server, stop, with_this_python
from pipeline.core import paths
from pipeline.shared.dataset import read_idx

log = logging.getLogger("feedback_loop")
STREAM, HELD_OUT, ORIGINAL = slice(0, 4000), slice(4000, 5000), slice(5000, 10000)
SOURCES = ("annotator-1", "annotator-2", "annotator-3", "annotator-4")


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    log.info("$ %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return proc.stdout


def workspace_copy(source: Path, dest: Path) -> dict[str, str]:
    """A copy of a workspace where `make repro` ran, with its own MLflow and BentoML stores; the
    environment its commands run with."""
    shutil.copytree(
        source, dest, symlinks=True, ignore=shutil.ignore_patterns(".venv", "monitoring")
    )
    home = dest / ".bentoml-home"
    shutil.copytree(
        Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml")) / "models", home / "models"
    )
    # The stages' `python` is this one (dvc.yaml's commands run `python -m ...` from PATH).
    env = with_this_python(
        dict(os.environ, BENTOML_HOME=str(home), DVC_NO_ANALYTICS="1", TF_CPP_MIN_LOG_LEVEL="2")
    )
    env.pop("MLFLOW_TRACKING_URI", None)  # the copy's own mlflow.db
    env.pop("FASHION_MNIST_MONITORING_DIR", None)  # the copy's own monitoring/
    return env


class Served:
    """`bentoml serve` of a workspace's champion, for the duration of a `with` block."""

    def __init__(self, ws: Path, env: dict) -> None:
        self.ws, self.env, self.port = ws, env, free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        run([sys.executable, "-m", "pipeline.register", "--import-only"], self.ws, self.env)
        cmd = [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        log_file = self.ws / "serve.log"
        self.proc = start_server(cmd, self.ws, self.env, log_file, f"{self.url}/readyz", 300)
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)

    def classify(self, photos: list[bytes]) -> list[dict]:
        def one(data: bytes) -> dict:
            files = {"image": ("photo.jpg", data, "image/jpeg")}
            resp = requests.post(f"{self.url}/classify", files=files, timeout=120)
            resp.raise_for_status()
            return resp.json()

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, photos))

    def predict(self, images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), 64):
            body = {"images": images[i : i + 64].tolist()}
            resp = requests.post(f"{self.url}/predict", json=body, timeout=120)
            resp.raise_for_status()
            out += [p["class_id"] for p in resp.json()["predictions"]]
        return np.array(out)

    def version(self) -> str:
        return requests.get(f"{self.url}/metadata", timeout=30).json()["model"]["version"]


def measure(served: Served, held_out: list[bytes], y_held: np.ndarray, x_orig, y_orig) -> dict:
    answers = np.array([a["class_id"] for a in served.classify(held_out)])
    return {
        "model_version": served.version(),
        "shifted_accuracy": round(float((answers == y_held).mean()), 4),
        "original_accuracy": round(float((served.predict(x_orig) == y_orig).mean()), 4),
    }


def send_corrections(served: Served, photos: list[bytes], labels: np.ndarray) -> int:
    """Each photo classified, then its right class sent by prediction_id, 64 to a request."""
    answers = served.classify(photos)
    stored = 0
    for i in range(0, len(answers), 64):
        items = [
            {"prediction_id": a["prediction_id"], "label": int(y)}
            for a, y in zip(answers[i : i + 64], labels[i : i + 64], strict=True)
        ]
        body = {"items": items, "source": SOURCES[(i // 64) % len(SOURCES)]}
        resp = requests.post(f"{served.url}/feedback", json=body, timeout=120)
        resp.raise_for_status()
        stored += len(resp.json()["stored"])
    return stored


def set_params(ws: Path, **dotted: object) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    for key, value in dotted.items():
        *path, leaf = key.split(".")
        node = params
        for part in path:
            node = node[part]
        node[leaf] = value
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def loop(base: Path, n: int, init: str, repeat: int, data: dict, root: Path) -> dict:
    """One pass of the loop with n corrections (see the module docstring)."""
    ws = root / f"n{n}-{init}"
    env = workspace_copy(base, ws)
    with Served(ws, env) as served:
        before = measure(served, data["held"], data["y_held"], data["x_orig"], data["y_orig"])
        stored = send_corrections(served, data["stream"][:n], data["y_stream"][:n])
    python = [sys.executable, "-m"]
    run([*python, "dvc", "repro", "feedback"], ws, env)
    run([*python, "pipeline.feedback", "review", "--accept-all"], ws, env)
    set_params(ws, **{"train.init": init, "prepare.feedback.repeat": repeat})
    began = time.monotonic()
    run([*python, "dvc", "repro"], ws, env)
    seconds = time.monotonic() - began
    decision = json.loads((ws / paths.CHAMPION).read_text())
    with Served(ws, env) as served:
        after = measure(served, data["held"], data["y_held"], data["x_orig"], data["y_orig"])
    curated = json.loads((ws / paths.FEEDBACK_REPORTS / "report.json").read_text())
    shutil.rmtree(ws / ".dvc" / "cache", ignore_errors=True)
    return {
        "corrections": n,
        "stored": stored,
        "init": init,
        "repeat": repeat,
        "accepted": curated.get("accepted_images"),
        "before": before,
        "after": after,
        "gate": {k: decision.get(k) for k in ("decision", "reason", "scores")},
        "repro_seconds": round(seconds, 1),
    }


def kept_runs(
    directory: Path, measurement: Measurement, model: dict, runs: list[dict]
) -> list[dict]:
    """Today's earlier runs for the same model with another N or init: each retraining costs
    minutes to an hour, so an N can be measured in its own invocation."""
    old = measurement.earlier(directory)
    if [m.get("sha256") for m in old.get("models", [])] != [model["sha256"]]:
        return []
    done = {(r["corrections"], r["init"]) for r in runs}
    earlier = old.get("figures", {}).get("runs", [])
    return [r for r in earlier if (r["corrections"], r["init"]) not in done]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True, help="where `make repro` ran")
    parser.add_argument("--corrections", type=int, nargs="+", default=[250, 1000, 4000])
    parser.add_argument("--init", nargs="+", default=["champion"], choices=["champion", "scratch"])
    parser.add_argument("--repeat", type=int, default=5, help="prepare.feedback.repeat")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    measurement = Measurement("feedback")
    base = args.workspace.resolve()
    x = read_idx(base / paths.RAW / "t10k-images-idx3-ubyte")
    y = read_idx(base / paths.RAW / "t10k-labels-idx1-ubyte")
    rng = np.random.default_rng(0)
    photos = [photograph(item, rng) for item in x[: HELD_OUT.stop]]
    data = {
        "stream": photos[STREAM],
        "y_stream": y[STREAM],
        "held": photos[HELD_OUT],
        "y_held": y[HELD_OUT],
        "x_orig": x[ORIGINAL],
        "y_orig": y[ORIGINAL],
    }
    runs = []
    with tempfile.TemporaryDirectory(prefix="feedback-loop-") as root:
        for n in args.corrections:
            for init in args.init:
                runs.append(loop(base, n, init, args.repeat, data, Path(root)))
                log.info("%s", json.dumps(runs[-1]))
    params = yaml.safe_load((base / "params.yaml").read_text())
    model = bento_model(
        f"{params['serve']['bento_model_name']}:latest", f"sqlite:///{base / 'mlflow.db'}"
    )
    runs = sorted(
        kept_runs(args.results, measurement, model, runs) + runs,
        key=lambda r: (r["corrections"], r["init"]),
    )
    figures = {
        "shift": "test items photographed: light uneven background, 40-75% of a 160x160 "
        "frame, off-centre, JPEG (harness/photos.py)",
        "stream": "test images 0-3,999 (corrections), 4,000-4,999 (held out)",
        "original": "test images 5,000-9,999",
        "runs": runs,
    }
    for line in feedback_rows(runs):
        print(line)
    print(f"wrote {measurement.record([model], figures, args.results)}")


if __name__ == "__main__":
    main()
