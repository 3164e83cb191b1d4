"""Load test of the running service: a bounded mix of good and bad requests at fixed concurrency.

Sends exactly --requests requests with --concurrency in flight, mixing POST /predict (one real
test image) and POST /classify (the same images as PNG files) with --bad-fraction malformed
requests of ten kinds. Reports requests/s, p50/p99 latency, counts by status, and the server's
memory (RSS of its process tree) after warm-up (at least `serve.request_timeout_s` of load, so
that memory is at its steady state) and after the run; checks that every good request got 200,
every bad one a 4xx, none a 5xx, and memory grew by at most 10%.

    python benchmarks/load_test.py                    # starts `bentoml serve` here, then loads it
    python benchmarks/load_test.py --url http://127.0.0.1:3000 --pid <bentoml serve pid>
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.servers import free_port, start_server, stop  # noqa: E402
from pipeline.params import load_params  # noqa: E402


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class Call:
    """One request: route, body (JSON or multipart file bytes), and whether it is malformed."""

    kind: str
    path: str
    json_text: str | None = None
    file: bytes | None = None
    content_type: str = "image/png"

    @property
    def bad(self) -> bool:
        return self.kind.startswith("bad:")


def bad_calls(image: np.ndarray, max_images: int, max_upload_bytes: int) -> list[Call]:
    """Ten kinds of malformed request; each must get a 4xx."""
    one = image.tolist()
    good_png = png(image)
    return [
        Call("bad:not an image", "/classify", file=b"this is not an image"),
        Call("bad:truncated png", "/classify", file=good_png[: len(good_png) // 2]),
        Call("bad:empty upload", "/classify", file=b""),
        Call("bad:oversize upload", "/classify", file=b"\0" * (max_upload_bytes + 1)),
        Call("bad:json to classify", "/classify", json_text=json.dumps({"image": one})),
        Call("bad:wrong shape", "/predict", json_text=json.dumps({"images": [one[:27]]})),
        Call("bad:value 256", "/predict", json_text=json.dumps({"images": [[[256] * 28] * 28]})),
        Call(
            "bad:NaN",
            "/predict",
            json_text='{"images": [[' + ",".join(["[NaN" + ",0" * 27 + "]"] * 28) + "]]}",
        ),
        Call("bad:empty list", "/predict", json_text='{"images": []}'),
        Call(
            "bad:too many images",
            "/predict",
            json_text=json.dumps({"images": [one] * (max_images + 1)}),
        ),
    ]


def plan(
    images: np.ndarray, n: int, bad_fraction: float, max_images: int, max_upload: int, seed: int
) -> list[Call]:
    """The request sequence: good calls alternate /predict and /classify; bad ones are spread evenly."""
    rng = np.random.default_rng(seed)
    bad = bad_calls(images[0], max_images, max_upload)
    calls, n_bad = [], 0
    for i in range(n):
        if n_bad < round((i + 1) * bad_fraction):
            calls.append(bad[n_bad % len(bad)])
            n_bad += 1
            continue
        image = images[rng.integers(len(images))]
        if i % 2:
            calls.append(
                Call("predict", "/predict", json_text=json.dumps({"images": [image.tolist()]}))
            )
        else:
            calls.append(Call("classify", "/classify", file=png(image)))
    return calls


@dataclass
class Report:
    requests: int
    concurrency: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    status_counts: dict[str, int]
    good_not_200: int
    bad_not_4xx: int
    server_errors: int
    memory_after_warmup_mb: float | None = None
    memory_after_run_mb: float | None = None
    memory_growth: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


async def _send(session: aiohttp.ClientSession, url: str, call: Call) -> tuple[int, float]:
    started = time.perf_counter()
    if call.file is not None:
        form = aiohttp.FormData()
        form.add_field("image", call.file, filename="image.png", content_type=call.content_type)
        kwargs = {"data": form}
    else:
        kwargs = {"data": call.json_text, "headers": {"Content-Type": "application/json"}}
    try:
        async with session.post(url + call.path, **kwargs) as resp:
            await resp.read()
            status = resp.status
    except aiohttp.ClientError:
        status = 0  # connection failure: counted as an error
    return status, time.perf_counter() - started


async def run_calls(
    url: str, calls: list[Call], concurrency: int
) -> tuple[list[tuple[int, float]], float]:
    """Send every call with `concurrency` in flight; (status, seconds) per call, and wall time."""
    results: list[tuple[int, float]] = [(0, 0.0)] * len(calls)
    next_index = iter(range(len(calls)))
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout
    ) as session:

        async def worker() -> None:
            for i in next_index:
                results[i] = await _send(session, url, calls[i])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - started


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 1e6


def load_test(
    url: str,
    images: np.ndarray,
    n: int,
    concurrency: int,
    bad_fraction: float,
    max_images: int,
    max_upload: int,
    pid: int | None = None,
    warmup: int = 200,
    seed: int = 0,
    warmup_seconds: float = 0.0,
) -> Report:
    """Warm up with good calls, measure memory, run the mix, measure memory again; check the rules.

    Warm-up sends at least `warmup` requests and lasts at least `warmup_seconds`: BentoML keeps
    each request's context until its `traffic.timeout` timer fires, so memory reaches its steady
    state only after one timeout's worth of traffic; growth after that is a leak.
    """
    warm = [c for c in plan(images, warmup * 2, 0.0, max_images, max_upload, seed + 1)][:warmup]
    began = time.perf_counter()
    asyncio.run(run_calls(url, warm, concurrency))
    while time.perf_counter() - began < warmup_seconds:
        asyncio.run(run_calls(url, warm, concurrency))
    mem_before = tree_rss_mb(pid) if pid else None
    calls = plan(images, n, bad_fraction, max_images, max_upload, seed)
    results, seconds = asyncio.run(run_calls(url, calls, concurrency))
    mem_after = tree_rss_mb(pid) if pid else None
    latencies = np.array([t for _, t in results]) * 1000
    statuses = Counter()
    good_not_200 = bad_not_4xx = server_errors = 0
    for call, (status, _) in zip(calls, results, strict=True):
        statuses[f"{call.kind if call.bad else 'good'} -> {status}"] += 1
        server_errors += status >= 500 or status == 0
        if call.bad:
            bad_not_4xx += not 400 <= status < 500
        else:
            good_not_200 += status != 200
    report = Report(
        requests=n,
        concurrency=concurrency,
        seconds=round(seconds, 2),
        requests_per_s=round(n / seconds, 1),
        p50_ms=round(float(np.percentile(latencies, 50)), 1),
        p99_ms=round(float(np.percentile(latencies, 99)), 1),
        status_counts=dict(sorted(statuses.items())),
        good_not_200=good_not_200,
        bad_not_4xx=bad_not_4xx,
        server_errors=server_errors,
    )
    if mem_before and mem_after:
        report.memory_after_warmup_mb = round(mem_before, 1)
        report.memory_after_run_mb = round(mem_after, 1)
        report.memory_growth = round(mem_after / mem_before - 1, 4)
        if report.memory_growth > 0.10:
            report.failures.append(f"memory grew {report.memory_growth:.1%} (limit 10%)")
    if good_not_200:
        report.failures.append(f"{good_not_200} good requests did not get 200")
    if bad_not_4xx:
        report.failures.append(f"{bad_not_4xx} bad requests did not get a 4xx")
    if server_errors:
        report.failures.append(f"{server_errors} server errors (5xx or connection failures)")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server; default: start `bentoml serve` here")
    parser.add_argument("--pid", type=int, help="PID of that server, for its memory")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--bad-fraction", type=float, default=0.10)
    parser.add_argument("--data", type=Path, default=Path("data/prepared/test.npz"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/load.json"))
    args = parser.parse_args()
    serve = load_params().serve
    with np.load(args.data) as data:
        images = data["x"][:1000]
    proc = None
    url, pid = args.url, args.pid
    if url is None:
        url = f"http://127.0.0.1:{free_port()}"
        cmd = [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1",
               "--port", url.rsplit(":", 1)[1]]  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        log = args.out.with_suffix(".serve.log")
        proc = start_server(cmd, Path.cwd(), dict(os.environ), log, f"{url}/readyz", 240)
        pid = proc.pid
    try:
        report = load_test(
            url,
            images,
            args.requests,
            args.concurrency,
            args.bad_fraction,
            serve.max_images_per_request,
            serve.max_upload_bytes,
            pid,
            warmup_seconds=serve.request_timeout_s + 2,
        )
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(asdict(report), indent=2) + "\n")
    print(f"wrote {args.out}")
    if not report.ok:
        sys.exit("FAILED: " + "; ".join(report.failures))


if __name__ == "__main__":
    main()
