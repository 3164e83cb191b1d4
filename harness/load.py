"""Load for a running service: a bounded mix of good and bad requests (`load_test`, what
benchmarks/load_test.py and tests/test_robustness.py run) and closed-loop clients sending one
request back to back (`closed_loop`, what the serving and monitoring benchmarks run)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import psutil
from PIL import Image


def sample_images(n: int, path: Path = Path("data/prepared/test.npz")) -> np.ndarray:
    """The first n test images (random pixels when the prepared data is not there)."""
    if path.exists():
        with np.load(path) as data:
            return data["x"][:n]
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    """A multipart/form-data body with one file, and its Content-Type."""
    boundary = "benchmarkboundary7MA4YWxkTrZu0gW"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


async def closed_loop(
    url: str,
    body: bytes,
    ctype: str,
    concurrency: int,
    seconds: float,
    warmup: float,
    images: int = 1,
) -> dict:
    """Closed loop: `concurrency` clients send back to back for `seconds` (after `warmup`)."""
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
