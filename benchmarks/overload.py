"""Overload: the service's capacity in a closed loop, then open-loop streams at multiples of it.

For each checkout given (default: this one), `bentoml serve` of its service with the default
params, serving the same BentoML model, then:
0. memory: the worst uploads this checkout's decode budget admits, and two it refuses
   (harness/uploads.py), all at once, twice: the serving processes' peak resident memory (RSS)
   and how each was answered;
1. capacity: --concurrency clients send POST /classify back to back (a --width x --height JPEG
   made from a test image) for --seconds after a warm-up; capacity = answers 200 per second;
2. for each --multiples m: an open-loop stream at m x capacity for --seconds (harness/load.py):
   goodput = answers 200 within --slo seconds of being due, per second; the p50/p99 of the answers
   200; 503s (shed) and everything else counted; a client waits at most --timeout seconds;
3. a lone request --after seconds after each stream's last one was due: its status and latency.
The target: goodput at least 0.8 of capacity at 2x and 4x, p99 bounded, the lone request normal.

    python benchmarks/overload.py                              # this checkout
    python benchmarks/overload.py --code . --code ../before    # both, in one run (ratios compare)

Writes the `overload` section of benchmarks/results/<date>-<machine>.json (harness/results.py);
docs/benchmarks.md's table comes from it (benchmarks/tables.py).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import requests
from PIL import Image

from harness.load import Request, Summary, closed_loop, open_loop
from harness.load_mix import sample_images
from harness.models import bento_model
from harness.results import RESULTS_DIR, Measurement, overload_rows, upload_memory_rows
from harness.servers import PeakMemory, free_port, start_server, stop
from harness.uploads import worst_uploads
from pipeline.core.params import load_params
from pipeline.shared.tracking import tracking_uri
from service import settings


def jpeg(width: int, height: int) -> bytes:
    """A test image as a dark-on-light colour photo of width x height, JPEG quality 90."""
    item = Image.fromarray(255 - sample_images(1)[0]).convert("RGB")
    buf = io.BytesIO()
    item.resize((width, height), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def git_commit(code: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(code), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


def serve(code: Path, logs: Path) -> tuple[subprocess.Popen, str]:
    """`bentoml serve` of the service in `code` (its own bentofile.yaml and params.yaml)."""
    port = free_port()
    env = dict(
        os.environ, FASHION_MNIST_MONITORING_DIR=tempfile.mkdtemp(prefix="overload-records-")
    )
    cmd = [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = logs / f"overload-{code.resolve().name}.log"
    url = f"http://127.0.0.1:{port}"
    return start_server(cmd, code, env, log, f"{url}/readyz", 240), url


def memory_burst(url: str, pid: int, uploads: dict[str, bytes]) -> dict:
    """All `uploads` at once to /classify, twice: peak RSS of the server's processes, answers."""

    def post(item: tuple[str, bytes]) -> tuple[str, int]:
        name, data = item
        files = {"image": ("upload", data, "application/octet-stream")}
        try:
            return name, requests.post(f"{url}/classify", files=files, timeout=120).status_code
        except requests.RequestException:
            return name, 0

    jobs = list(uploads.items())
    with PeakMemory(pid) as memory, ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(post, jobs)) + list(pool.map(post, jobs))
    statuses: dict[str, list[int]] = {}
    for name, status in answers:
        statuses.setdefault(name, []).append(status)
    return {
        "rss_before_mb": round(memory.start / 1e6, 1),
        "rss_peak_mb": round(memory.peak / 1e6, 1),
        "answers": statuses,
    }


async def measure(url: str, request: Request, args: argparse.Namespace) -> dict:
    answers = await closed_loop(url, [request], args.concurrency, args.seconds, args.warmup)
    closed = Summary.of(answers, args.seconds, args.slo)
    capacity = closed.as_expected / args.seconds
    result = {"capacity_per_s": round(capacity, 1), "closed_loop": asdict(closed), "streams": []}
    for multiple in args.multiples:
        rate = multiple * capacity
        stream = asyncio.ensure_future(open_loop(url, [request], rate, args.seconds, args.timeout))
        await asyncio.sleep(args.seconds + args.after)
        lone = (await open_loop(url, [request], 1.0, 1.0, args.timeout))[0]
        summary = Summary.of(await stream, args.seconds, args.slo)
        result["streams"].append(
            {
                "multiple": multiple,
                **asdict(summary),
                "goodput_of_capacity": round(summary.goodput_per_s / capacity, 3),
                "lone_after_s": args.after,
                "lone_status": lone.status,
                "lone_ms": round(lone.latency * 1000, 1),
            }
        )
        await asyncio.sleep(args.settle)  # what the stream left in the server's queue drains
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--code",
        type=Path,
        action="append",
        help="a checkout whose service to measure (repeat; default: this one)",
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--multiples", type=float, nargs="+", default=[2.0, 4.0])
    parser.add_argument("--slo", type=float, default=1.0, help="seconds; default 1")
    parser.add_argument("--timeout", type=float, default=30.0, help="client's wait, seconds")
    parser.add_argument("--after", type=float, default=3.0, help="lone request's delay, seconds")
    parser.add_argument("--settle", type=float, default=15.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    measurement = Measurement("overload")
    model = bento_model(settings.model_tag(), tracking_uri())
    image = jpeg(args.width, args.height)
    uploads = worst_uploads(load_params().serve.max_decode_mb)
    request = Request.upload("/classify", image, "photo.jpg", "image/jpeg", kind="photo")
    logs = args.results / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    runs = {}
    for code in args.code or [Path.cwd()]:
        label = f"{code.resolve().name} ({git_commit(code)})"
        proc, url = serve(code, logs)
        try:
            burst = memory_burst(url, proc.pid, uploads)
            runs[label] = {"memory": burst, **asyncio.run(measure(url, request, args))}
        finally:
            stop(proc)
        time.sleep(2)
    for line in [*upload_memory_rows(runs), "", *overload_rows(runs)]:
        print(line)
    figures = {
        "endpoint": "/classify",
        "upload": f"{args.width}x{args.height} JPEG, {len(image):,} bytes",
        "slo_s": args.slo,
        "client_timeout_s": args.timeout,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "runs": runs,
    }
    print(f"wrote {measurement.record([model], figures, args.results)}")


if __name__ == "__main__":
    main()
