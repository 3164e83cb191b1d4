"""Serving benchmark: the service against BentoML's bound, its own batcher, the MLflow peer and
the model's in-process ceiling, all measured in one run on this machine.

Starts, one at a time on free loopback ports (nothing else should run meanwhile):
  - the service: `bentoml serve` from the repository root, once per --workers value;
  - no-op: a BentoML service with the same request and response types and no model, one worker
    per CPU (NoopClassifier below): what BentoML's per-request cost alone allows;
  - batchable: the same ONNX model behind BentoML's own adaptive batcher (`batchable=True`, one
    worker per CPU; BatchedClassifier below), the design alternative to the in-process batching;
  - mlflow: `mlflow models serve -m models:/<name>@champion --env-manager local`, the peer an
    MLflow user runs, in its own request format ({"inputs": ...}).
Each is loaded by closed-loop clients over keep-alive connections (harness/load.py): single-image
POST /predict at each --concurrency, and for the service also /classify with a PNG and full
/predict requests. Then, in this process, the model's ceiling per runtime (harness/runtimes.py:
TensorFlow `tf.function`, ONNX Runtime, LiteRT if installed) at batch 1, 8, 32 and 128. Prints
a table with the ratios and writes the `serve` section of benchmarks/results/<date>-<machine>.json
(harness/results.py), with the served model's SHA-256. Needs the champion in the BentoML store
and MLflow (`make repro`).

    python benchmarks/serve_benchmark.py [--workers 1 2] [--seconds 10]

The load generator shares the machine's CPUs with the servers: every number includes its cost.
Targets: single-image /predict at concurrency 32 >= 0.95 of the additive ideal
1 / (1/no-op + 1/TensorFlow ceiling at batch 128); p50 at concurrency 1 <= 2x the no-op's;
>= 25x `mlflow models serve` at concurrency 32.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import bentoml
import numpy as np
import yaml

from harness.load import Request, Summary, closed_loop
from harness.load_mix import classify_request, predict_request, sample_images
from harness.models import bento_model
from harness.results import RESULTS_DIR, Measurement, runtime_rows, server_rows
from harness.runtimes import BATCHES, ceilings, runtimes
from harness.servers import free_port, start_server, stop, with_this_python
from pipeline.core import paths
from pipeline.shared.machine import cpu_model, cpus
from service import settings
from service.schemas import Image28, Images, ModelRef, Prediction, Predictions
from service.schemas import predictions as to_predictions

ROOT = Path(__file__).resolve().parents[1]

TARGETS = {"vs_additive_ideal_c32": 0.95, "p50_vs_noop_c1": 2.0, "vs_mlflow_c32": 25.0}
CLASSES = [str(i) for i in range(10)]


@bentoml.service(name="noop_classifier", workers=os.cpu_count() or 1)
class NoopClassifier:
    """The framework's bound: the same request and response types, no model."""

    def __init__(self) -> None:
        self.ref = ModelRef(name="noop", version="0")

    @bentoml.api(route="/predict")
    def predict(self, images: Images) -> Predictions:
        proba = np.full((len(images), 10), 0.1, np.float32)
        return Predictions(predictions=to_predictions(proba, CLASSES, self.ref))


@bentoml.service(name="batched_classifier", workers=os.cpu_count() or 1)
class BatchedClassifier:
    """The alternative design: BentoML's adaptive batcher in front of the same ONNX model. A
    batchable API takes one list and answers each request with a bare JSON list."""

    bento_model = bentoml.models.BentoModel(settings.model_tag())

    def __init__(self) -> None:
        from pipeline.core.inference import ONNX_FILE, OnnxClassifier

        self.classifier = OnnxClassifier(self.bento_model.path_of(ONNX_FILE), threads=1)
        self.ref = ModelRef(name="batched", version="0")

    @bentoml.api(route="/predict", batchable=True, max_batch_size=128, max_latency_ms=1000)
    def predict(self, images: list[Image28]) -> list[Prediction]:
        proba = self.classifier.predict_proba(np.asarray(images, np.uint8))
        return to_predictions(proba, CLASSES, self.ref)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", nargs="+", default=["1", "2"], help="serve.workers values")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per point")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--ceiling-seconds", type=float, default=3.0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["batchable", "mlflow"])
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT / paths.TEST_SPLIT,
        help="test images to send (random pixels if missing)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIR,
        help="directory of the result files (harness/results.py)",
    )
    args = parser.parse_args()
    measurement = Measurement("serve")
    logs = args.results / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    from pipeline.core.params import load_params
    from pipeline.shared.tracking import tracking_uri

    params = load_params(ROOT / "params.yaml")
    model = bentoml.models.get(settings.model_tag())
    served = bento_model(str(model.tag), tracking_uri())
    pixels = sample_images(1, args.data)[0]
    full = sample_images(params.serve.max_images_per_request, args.data)
    one, full_predict = predict_request(pixels[None]), predict_request(full)
    results: dict = {
        "cpu": cpu_model(),
        "cpus": cpus(),
        "bento_model": str(model.tag),
        "mlflow_model_version": model.info.labels.get("mlflow_model_version"),
        "seconds": args.seconds,
        "warmup_seconds": args.warmup,
        "ceiling_seconds": args.ceiling_seconds,
        "test_images": str(args.data) if args.data.exists() else "random pixels",
        "servers": {},
    }
    # `mlflow models serve` starts `uvicorn` from PATH: this interpreter's.
    env = with_this_python(
        {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MLFLOW_TRACKING_URI": tracking_uri()}
    )

    def measure(server: str, name: str, url: str, request: Request, c: int) -> None:
        answers = asyncio.run(closed_loop(url, [request], c, args.seconds, args.warmup))
        row = point(Summary.of(answers), c, request.images)
        results["servers"].setdefault(server, {}).setdefault(name, []).append(row)
        speed = f"{row['rps']:.0f} req/s, p50 {row['p50_ms']:.2f} ms"
        print(f"{server} {name} c={c}: {speed}, {row['errors']} errors", flush=True)

    def serve(cmd: list[str], name: str, health: str, extra_env: dict | None = None):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [c.replace("{port}", str(port)) for c in cmd]
        began = time.perf_counter()
        log = logs / f"serve-{re.sub('[^a-z0-9]+', '-', name.lower()).strip('-')}.log"
        proc = start_server(cmd, ROOT, {**env, **(extra_env or {})}, log, f"{url}{health}", 300)
        results.setdefault("ready_s", {})[name] = time.perf_counter() - began
        return proc, url

    bentoml_cmd = [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1"]
    bentoml_cmd += ["--port", "{port}"]
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers:
            raw = yaml.safe_load((ROOT / "params.yaml").read_text())
            raw["serve"]["workers"] = workers if workers == "cpu_count" else int(workers)
            custom = Path(tmp) / f"params-{workers}.yaml"
            custom.write_text(yaml.safe_dump(raw))
            name = f"service, {workers} worker(s)"
            proc, url = serve(bentoml_cmd, name, "/readyz", {"FASHION_MNIST_PARAMS": str(custom)})
            try:
                for c in args.concurrency:
                    measure(name, "/predict", url, one, c)
                for c in args.concurrency:
                    measure(name, "/classify", url, classify_request(pixels), c)
                measure(name, f"/predict x{len(full)}", url, full_predict, 8)
            finally:
                stop(proc)
        peers = [("no-op", "NoopClassifier", "/readyz")]
        if "batchable" not in args.skip:
            peers.append(("batchable", "BatchedClassifier", "/readyz"))
        for name, cls, health in peers:
            proc, url = serve([*bentoml_cmd, f"benchmarks.serve_benchmark:{cls}"], name, health)
            try:
                for c in args.concurrency:
                    measure(name, "/predict", url, one, c)
            finally:
                stop(proc)
        if "mlflow" not in args.skip:
            model_uri = f"models:/{params.mlflow.registered_model_name}@champion"
            mlflow = str(Path(sys.executable).parent / "mlflow")
            cmd = [mlflow, "models", "serve", "-m", model_uri, "--env-manager", "local"]
            cmd += ["--host", "127.0.0.1", "-p", "{port}"]
            proc, url = serve(cmd, "mlflow", "/ping")
            invocation = Request("/invocations", json.dumps({"inputs": [pixels.tolist()]}).encode())
            try:
                for c in args.concurrency:
                    measure("mlflow", "/invocations", url, invocation, c)
            finally:
                stop(proc)
        # Last: TensorFlow's objects would otherwise slow this process's load generator.
        found = runtimes(
            Path(model.path_of("model.keras")), Path(model.path_of("model.onnx")), Path(tmp)
        )
        results["ceilings"] = ceilings(found, args.ceiling_seconds, sample_images(1024, args.data))
    for name, row in results["ceilings"].items():
        speeds = ", ".join(f"b{b} {row[f'batch_{b}']['images_per_s']:.0f}/s" for b in BATCHES)
        print(f"ceiling {name}: {speeds}")

    results["verdict"] = verdict(results)
    print()
    print(table(results))
    print(json.dumps(results["verdict"], indent=2))
    out = measurement.record([served], results, args.results)
    print(f"wrote {out}")


def point(summary: Summary, concurrency: int, images: int) -> dict:
    """One point of a server's table, in the result files' names (harness/results.py)."""
    return {
        "concurrency": concurrency,
        "images_per_request": images,
        "requests": summary.requests,
        "errors": summary.good_not_200,
        "rps": summary.requests_per_s,
        "images_per_s": summary.images_per_s,
        "p50_ms": summary.p50_ms,
        "p95_ms": summary.p95_ms,
        "p99_ms": summary.p99_ms,
    }


def at(rows: list[dict], c: int) -> dict:
    return next(r for r in rows if r["concurrency"] == c)


def verdict(results: dict) -> dict:
    servers = results["servers"]
    low, top = 1, 32
    noop = servers["no-op"]["/predict"]
    tf_ceiling = results["ceilings"]["tensorflow"]["batch_128"]["images_per_s"]
    ideal = 1 / (1 / at(noop, top)["rps"] + 1 / tf_ceiling)
    out = {"targets": TARGETS, "additive_ideal_c32": ideal, "by_server": {}}
    for name, rows in servers.items():
        if not name.startswith("service"):
            continue
        predict = rows["/predict"]
        measured = {
            "vs_additive_ideal_c32": at(predict, top)["rps"] / ideal,
            "p50_vs_noop_c1": at(predict, low)["p50_ms"] / at(noop, low)["p50_ms"],
        }
        if "mlflow" in servers:
            mlflow = at(servers["mlflow"]["/invocations"], top)
            measured["vs_mlflow_c32"] = at(predict, top)["rps"] / mlflow["rps"]
        met = {
            k: (v <= TARGETS[k]) if k.startswith("p50") else (v >= TARGETS[k])
            for k, v in measured.items()
        }
        out["by_server"][name] = {"measured": measured, "met": met}
    return out


def table(results: dict) -> str:
    lines = [
        f"CPU: {results['cpu']} ({results['cpus']} CPUs); model {results['bento_model']}",
        *server_rows(results["servers"]),
    ]
    lines += ["", *runtime_rows(results["ceilings"], BATCHES)]
    lines += ["", "ready (s): " + ", ".join(f"{k} {v:.1f}" for k, v in results["ready_s"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
