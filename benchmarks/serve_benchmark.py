"""Serving benchmark: the running BentoML service against its floor and its ceiling.

Against a running server (`bentoml serve`, default http://127.0.0.1:3000) it measures p50/p95/p99
latency and requests/s of POST /predict with one image and POST /classify with a PNG, at each
concurrency (1, 8, 32: closed-loop clients over keep-alive connections), and /predict with a full
request of images at concurrency 8. Beside them:
  - ceiling: the same model in this process, batched, with no HTTP (images/s at MAX_BATCH);
  - floor: a naive service (NaiveClassifier below) calling `model.predict` per request;
  - HTTP bound: a no-op BentoML service (NoopClassifier below, one worker per CPU) that parses
    the same request and returns an answer of the same size without any model: what BentoML's
    per-request cost alone allows on this machine.
Both reference services are started here on free ports. Prints a table with the ratios and
writes JSON to benchmarks/results/ (git-ignored).

    bentoml serve &                      # from the repository root
    python benchmarks/serve_benchmark.py --url http://127.0.0.1:3000

The load generator shares the machine's CPUs with the server: on a small machine the numbers
include its cost. Targets (2-core machine): /predict p50 <= 10 ms at concurrency 1; at
concurrency 32, >= 5x the naive service's requests/s and >= 30% of the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import bentoml
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.load_test import png  # noqa: E402
from benchmarks.servers import free_port, start_server, stop, wait_http  # noqa: E402
from service import settings  # noqa: E402
from service.schemas import Images, ModelRef, Predictions, predictions  # noqa: E402

TARGETS = {"p50_ms_c1": 10.0, "vs_naive_c32": 5.0, "vs_ceiling_c32": 0.30}


@bentoml.service(name="naive_classifier", workers=1)
class NaiveClassifier:
    """The floor: the same model and JSON contract, `model.predict` on every request, no batching."""

    bento_model = bentoml.models.BentoModel(settings.model_tag())

    def __init__(self) -> None:
        import keras

        from pipeline.inference import MODEL_FILE, configure_threads

        configure_threads()
        self.model = keras.saving.load_model(self.bento_model.path_of(MODEL_FILE), compile=False)
        labels = self.bento_model.info.labels
        self.ref = ModelRef(
            name=labels["mlflow_model_name"], version=labels["mlflow_model_version"]
        )

    @bentoml.api(route="/predict")
    def predict(self, images: Images) -> Predictions:
        proba = self.model.predict(np.asarray(images, np.uint8), verbose=0)
        return Predictions(predictions=predictions(proba, self.ref))


@bentoml.service(name="noop_classifier", workers=os.cpu_count() or 1)
class NoopClassifier:
    """The HTTP bound: the same request and response types, no model."""

    def __init__(self) -> None:
        self.ref = ModelRef(name="noop", version="0")

    @bentoml.api(route="/predict")
    def predict(self, images: Images) -> Predictions:
        proba = np.full((len(images), 10), 0.1, np.float32)
        return Predictions(predictions=predictions(proba, self.ref))


def test_images(n: int) -> np.ndarray:
    """The first n test images (random pixels when the data is not there)."""
    path = ROOT / "data" / "prepared" / "test.npz"
    if path.exists():
        with np.load(path) as data:
            return data["x"][:n]
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = "benchmarkboundary7MA4YWxkTrZu0gW"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


async def load(
    url: str,
    body: bytes,
    ctype: str,
    concurrency: int,
    seconds: float,
    warmup: float,
    images: int = 1,
) -> dict:
    """Closed loop: `concurrency` clients send back to back for `seconds` (after `warmup`)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, headers={"Content-Type": ctype}
    ) as session:

        async def client(stop_at: float, record: bool) -> None:
            nonlocal errors
            while (start := time.perf_counter()) < stop_at:
                async with session.post(url, data=body) as resp:
                    await resp.read()
                    ok = resp.status == 200
                if record:
                    latencies.append(time.perf_counter() - start)
                    errors += not ok

        await asyncio.gather(
            *(client(time.perf_counter() + warmup, False) for _ in range(concurrency))
        )
        began = time.perf_counter()
        await asyncio.gather(*(client(began + seconds, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "images_per_request": images,
        "requests": len(ms),
        "errors": errors,
        "rps": len(ms) / elapsed,
        "images_per_s": images * len(ms) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def ceiling(model_file: str, batch: int, seconds: float) -> dict:
    """In-process throughput of the compiled model on full batches: what HTTP can at most reach."""
    from pipeline.inference import Classifier, configure_threads

    configure_threads()
    clf = Classifier.from_file(model_file)
    images = np.resize(test_images(batch), (batch, 28, 28))
    clf.predict_proba(images)
    n, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        clf.predict_proba(images)
        n += batch
    return {"batch": batch, "images_per_s": n / (time.perf_counter() - began)}


def start_service(name: str, log: Path) -> tuple[subprocess.Popen, str]:
    """`bentoml serve benchmarks.serve_benchmark:<name>` on a free port, once it is ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "bentoml", "serve", f"benchmarks.serve_benchmark:{name}",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return start_server(cmd, ROOT, env, log, f"{url}/readyz", 180), url


def table(results: dict) -> str:
    naive = {r["concurrency"]: r["rps"] for r in results["naive"]["predict"]}
    top = results["ceiling"]["images_per_s"]
    lines = [
        f"| {'endpoint':<16} | conc | req/s | images/s | p50 ms | p95 ms | p99 ms | errors "
        "| x naive | % of ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [
        *results["service"].items(),
        ("naive /predict", results["naive"]["predict"]),
        ("no-op /predict", results["noop"]["predict"]),
    ]
    for name, points in rows:
        for r in points:
            single = r["images_per_request"] == 1 and r["concurrency"] in naive
            vs_naive = f"{r['rps'] / naive[r['concurrency']]:.1f}" if single else "-"
            lines.append(
                f"| {name:<16} | {r['concurrency']} | {r['rps']:.0f} | {r['images_per_s']:.0f} "
                f"| {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} "
                f"| {vs_naive} | {100 * r['images_per_s'] / top:.1f}% |"
            )
    lines.append(
        f"| ceiling: in-process, batch {results['ceiling']['batch']} | | | {top:.0f} "
        "| | | | | | 100% |"
    )
    return "\n".join(lines)


def verdict(results: dict) -> dict:
    predict = {r["concurrency"]: r for r in results["service"]["/predict"]}
    naive = {r["concurrency"]: r for r in results["naive"]["predict"]}
    noop = {r["concurrency"]: r for r in results["noop"]["predict"]}
    low, top = min(predict), max(predict)  # 1 and 32 by default
    ceiling_ips = results["ceiling"]["images_per_s"]
    measured = {
        "p50_ms_c1": predict[low]["p50_ms"],
        "vs_naive_c32": predict[top]["rps"] / naive[top]["rps"],
        "vs_ceiling_c32": predict[top]["rps"] / ceiling_ips,
    }
    met = {
        "p50_ms_c1": measured["p50_ms_c1"] <= TARGETS["p50_ms_c1"],
        "vs_naive_c32": measured["vs_naive_c32"] >= TARGETS["vs_naive_c32"],
        "vs_ceiling_c32": measured["vs_ceiling_c32"] >= TARGETS["vs_ceiling_c32"],
    }
    # Context, not targets: how far HTTP alone gets, and how much of that the service keeps.
    bound = {
        "noop_vs_ceiling_c32": noop[top]["rps"] / ceiling_ips,
        "service_vs_noop_c32": predict[top]["rps"] / noop[top]["rps"],
    }
    return {"targets": TARGETS, "measured": measured, "met": met, "http_bound": bound}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the running service")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per point")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    wait_http(f"{args.url}/readyz", None, 30)
    with urllib.request.urlopen(f"{args.url}/metadata") as resp:
        meta = json.load(resp)
    pixels = test_images(1)[0]
    predict_body = json.dumps({"images": [pixels.tolist()]}).encode()
    png_body, png_type = multipart("image", "item.png", png(pixels), "image/png")
    results: dict = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "metadata": meta,
                     "cpus": os.cpu_count(), "seconds": args.seconds}  # fmt: skip

    from service.service import MAX_BATCH

    model_file = bentoml.models.get(meta["bento_model"]).path_of("model.keras")
    results["ceiling"] = ceiling(model_file, MAX_BATCH, args.seconds)
    print(f"ceiling: {results['ceiling']['images_per_s']:.0f} images/s", flush=True)
    batch = test_images(meta["limits"]["max_images_per_request"])
    batch_body = json.dumps({"images": batch.tolist()}).encode()
    # TensorFlow left ~10^6 objects in this process: full garbage collections would pause the
    # load generator for 100+ ms and show up as server latency. Exempt them.
    gc.collect()
    gc.freeze()

    def measure(rows: list, url: str, body: bytes, ctype: str, c: int, images: int = 1) -> None:
        rows.append(asyncio.run(load(url, body, ctype, c, args.seconds, args.warmup, images)))
        print(
            f"{url} x{images} c={c}: {rows[-1]['rps']:.0f} req/s, p50 {rows[-1]['p50_ms']:.1f} ms"
        )

    # Lowest concurrency first for both endpoints: BentoML's batcher learns how long to wait
    # for company from recent traffic, and keeps waiting longer for a while after heavy load.
    service = results["service"] = {"/predict": [], "/classify": [], f"/predict x{len(batch)}": []}
    for c in args.concurrency:
        measure(service["/predict"], f"{args.url}/predict", predict_body, "application/json", c)
        measure(service["/classify"], f"{args.url}/classify", png_body, png_type, c)
    measure(service[f"/predict x{len(batch)}"], f"{args.url}/predict", batch_body,
            "application/json", 8, len(batch))  # fmt: skip

    args.out.mkdir(parents=True, exist_ok=True)
    for key, name in (("naive", "NaiveClassifier"), ("noop", "NoopClassifier")):
        proc, url = start_service(name, args.out / f"{key}.log")
        try:
            results[key] = {"predict": []}
            for c in args.concurrency:
                measure(results[key]["predict"], f"{url}/predict", predict_body,
                        "application/json", c)  # fmt: skip
        finally:
            stop(proc)

    results["verdict"] = verdict(results)
    print()
    print(table(results))
    print(json.dumps(results["verdict"], indent=2))
    out = args.out / f"serve-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
