"""Load test of the running service: a bounded mix of good and bad requests at fixed concurrency.

Sends exactly --requests requests with --concurrency in flight, mixing POST /predict (one real
test image) and POST /classify (the same images as PNG files) with --bad-fraction malformed
requests of ten kinds. Reports requests/s, p50/p99 latency, counts by status, and the server's
memory (RSS of its process tree) after warm-up (at least `serve.request_timeout_s` of load, so
that memory is at its steady state) and after the run; checks that every good request got 200,
every bad one a 4xx, none a 5xx, and memory grew by at most 10%.

    python benchmarks/load_test.py                    # starts `bentoml serve` here, then loads it
    python benchmarks/load_test.py --url http://127.0.0.1:3000 --pid <bentoml serve pid>

Writes its figures to the `load` section of benchmarks/results/<date>-<machine>.json
(harness/results.py), with the served model's SHA-256.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from harness.load_mix import LoadTest, load_test
from harness.models import bento_model
from harness.results import RESULTS_DIR, Measurement
from harness.servers import free_port, start_server, stop
from pipeline.core import paths
from pipeline.core.params import load_params
from service import settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server; default: start `bentoml serve` here")
    parser.add_argument("--pid", type=int, help="PID of that server, for its memory")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--bad-fraction", type=float, default=0.10)
    parser.add_argument("--data", type=Path, default=paths.TEST_SPLIT)
    parser.add_argument("--model", help="BentoML tag the server serves (default: the service's)")
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIR,
        help="directory of the result files (harness/results.py)",
    )
    args = parser.parse_args()
    measurement = Measurement("load")
    serve = load_params().serve
    model = describe_model(args.model or settings.model_tag())
    with np.load(args.data) as data:
        images = data["x"][:1000]
    proc = None
    url, pid = args.url, args.pid
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)]
        log = args.results / "logs" / "load-serve.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        proc = start_server(cmd, Path.cwd(), dict(os.environ), log, f"{url}/readyz", 240)
        pid = proc.pid
    test = LoadTest.for_service(serve, args.requests, args.concurrency, args.bad_fraction)
    try:
        report = load_test(url, images, test, pid)
    finally:
        if proc is not None:
            stop(proc)
    rows = [
        ("requests", report.requests),
        ("concurrency", report.concurrency),
        ("requests/s", report.requests_per_s),
        ("p50 ms", report.p50_ms),
        ("p99 ms", report.p99_ms),
        ("good not 200", report.good_not_200),
        ("bad not 4xx", report.bad_not_4xx),
        ("5xx / failed", report.server_errors),
        ("memory after warm-up MB", report.memory_after_warmup_mb),
        ("memory after run MB", report.memory_after_run_mb),
        (
            "memory growth",
            f"{report.memory_growth:.1%}" if report.memory_growth is not None else None,
        ),
    ]
    for name, value in rows:
        print(f"{name:<26} {value}")
    for name, count in report.status_counts.items():
        print(f"  {name:<40} {count}")
    server = "bentoml serve (started here)" if proc else url
    figures = {
        **asdict(report),
        "bad_fraction": test.bad_fraction,
        "warmup_seconds": test.warmup_seconds,
        "server": server,
    }
    out = measurement.record([model], figures, args.results)
    print(f"wrote {out}")
    if not report.ok:
        sys.exit("FAILED: " + "; ".join(report.failures))


def describe_model(tag: str) -> dict:
    """The served model as a result file names it (harness/models.py)."""
    from pipeline.shared.tracking import tracking_uri

    return bento_model(tag, tracking_uri())


if __name__ == "__main__":
    main()
