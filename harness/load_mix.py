"""What a load test sends, and its rules: good requests (POST /predict with one test image, POST
/classify with the same images as PNG files) mixed with malformed ones of ten kinds, sent by the
load generator (harness/load.py) with a fixed number in flight; the server's memory after a
warm-up and after the run. What benchmarks/load_test.py, benchmarks/deploy_check.py and
tests/test_robustness.py run.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from harness.load import Request, Summary, closed_loop
from pipeline.core import paths
from pipeline.core.params import ServeParams


def sample_images(n: int, path: Path = paths.TEST_SPLIT) -> np.ndarray:
    """The first n test images (random pixels when the prepared data is not there)."""
    if path.exists():
        with np.load(path) as data:
            return data["x"][:n]
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def png(image: np.ndarray) -> bytes:
    """An image as a PNG file."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def predict_request(images: np.ndarray) -> Request:
    """POST /predict of `images` (n x 28 x 28) as JSON."""
    body = json.dumps({"images": images.tolist()}).encode()
    return Request("/predict", body, kind="predict", images=len(images))


def classify_request(image: np.ndarray) -> Request:
    """POST /classify of one image as a PNG file."""
    return Request.upload("/classify", png(image), "image.png", "image/png", kind="classify")


def bad_requests(image: np.ndarray, max_images: int, max_upload_bytes: int) -> list[Request]:
    """Ten kinds of malformed request; each must get a 4xx."""
    one = image.tolist()
    good_png = png(image)

    def upload(kind: str, data: bytes) -> Request:
        return Request.upload("/classify", data, "image.png", "image/png", kind=kind, bad=True)

    def json_to(path: str, kind: str, text: str) -> Request:
        return Request(path, text.encode(), kind=kind, bad=True)

    nan_row = "[NaN" + ",0" * 27 + "]"
    return [
        upload("not an image", b"this is not an image"),
        upload("truncated png", good_png[: len(good_png) // 2]),
        upload("empty upload", b""),
        upload("oversize upload", b"\0" * (max_upload_bytes + 1)),
        json_to("/classify", "json to classify", json.dumps({"image": one})),
        json_to("/predict", "wrong shape", json.dumps({"images": [one[:27]]})),
        json_to("/predict", "value 256", json.dumps({"images": [[[256] * 28] * 28]})),
        json_to("/predict", "NaN", '{"images": [[' + ",".join([nan_row] * 28) + "]]}"),
        json_to("/predict", "empty list", '{"images": []}'),
        json_to("/predict", "too many images", json.dumps({"images": [one] * (max_images + 1)})),
    ]


@dataclass(frozen=True)
class LoadTest:
    """A bounded load test: `requests` requests with `concurrency` in flight, `bad_fraction` of
    them malformed (spread evenly); before them a warm-up of good requests, at least
    `warmup_requests` of them and lasting at least `warmup_seconds`. It fails when a good
    request does not get 200, a bad one a 4xx, anything a 5xx, or the server's memory grows by
    more than `max_memory_growth` after the warm-up."""

    requests: int
    concurrency: int
    bad_fraction: float
    max_images: int  # serve.max_images_per_request
    max_upload_bytes: int  # serve.max_upload_bytes
    warmup_requests: int = 200
    warmup_seconds: float = 0.0
    seed: int = 0
    max_memory_growth: float = 0.10

    @classmethod
    def for_service(
        cls, serve: ServeParams, requests: int, concurrency: int, bad_fraction: float
    ) -> LoadTest:
        """A load test of a service with these `serve` params. Its warm-up lasts
        `serve.request_timeout_s` + 2 s: BentoML keeps each request's context until its
        timeout's timer fires, so memory reaches its steady state only after one timeout's
        worth of traffic; growth after that is a leak."""
        return cls(
            requests=requests,
            concurrency=concurrency,
            bad_fraction=bad_fraction,
            max_images=serve.max_images_per_request,
            max_upload_bytes=serve.max_upload_bytes,
            warmup_seconds=serve.request_timeout_s + 2,
        )

    def plan(self, images: np.ndarray, n: int, bad_fraction: float, seed: int) -> list[Request]:
        """`n` requests: good ones alternate /classify and /predict of a random image of
        `images`, bad ones are spread evenly."""
        rng = np.random.default_rng(seed)
        bad = bad_requests(images[0], self.max_images, self.max_upload_bytes)
        built: dict[tuple[int, int], Request] = {}  # (image, odd): each good request built once
        requests: list[Request] = []
        n_bad = 0
        for i in range(n):
            if n_bad < round((i + 1) * bad_fraction):
                requests.append(bad[n_bad % len(bad)])
                n_bad += 1
                continue
            j = int(rng.integers(len(images)))
            if (j, i % 2) not in built:
                image = images[j : j + 1]
                built[j, i % 2] = predict_request(image) if i % 2 else classify_request(image[0])
            requests.append(built[j, i % 2])
        return requests

    def failures(self, summary: Summary, memory_growth: float | None) -> tuple[str, ...]:
        """The rules a run broke, in words."""
        found = []
        if memory_growth is not None and memory_growth > self.max_memory_growth:
            found.append(f"memory grew {memory_growth:.1%} (limit {self.max_memory_growth:.0%})")
        if summary.good_not_200:
            found.append(f"{summary.good_not_200} good requests did not get 200")
        if summary.bad_not_4xx:
            found.append(f"{summary.bad_not_4xx} bad requests did not get a 4xx")
        if summary.server_errors:
            found.append(f"{summary.server_errors} server errors (5xx or connection failures)")
        return tuple(found)


@dataclass(frozen=True)
class Report(Summary):
    """A load test's summary, with the server's memory (RSS of its process tree, MB) after the
    warm-up and after the run, and the rules it broke."""

    concurrency: int = 0
    memory_after_warmup_mb: float | None = None
    memory_after_run_mb: float | None = None
    memory_growth: float | None = None
    failures: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):  # one that exited meanwhile
            total += proc.memory_info().rss
    return total / 1e6


def load_test(url: str, images: np.ndarray, test: LoadTest, pid: int | None = None) -> Report:
    """Warm up with good requests, measure memory, run the mix, measure memory again; the
    summary and the rules broken. Memory only with the server's `pid`."""
    warm = test.plan(images, test.warmup_requests, 0.0, test.seed + 1)
    mix = test.plan(images, test.requests, test.bad_fraction, test.seed)

    async def warm_up() -> None:
        began = asyncio.get_running_loop().time()
        await closed_loop(url, warm, test.concurrency)
        left = test.warmup_seconds - (asyncio.get_running_loop().time() - began)
        if left > 0:
            await closed_loop(url, warm, test.concurrency, seconds=left)

    asyncio.run(warm_up())
    before = tree_rss_mb(pid) if pid else None
    summary = Summary.of(asyncio.run(closed_loop(url, mix, test.concurrency)))
    after = tree_rss_mb(pid) if pid else None
    growth = round(after / before - 1, 4) if before and after else None
    return Report(
        **vars(summary),
        concurrency=test.concurrency,
        memory_after_warmup_mb=round(before, 1) if before else None,
        memory_after_run_mb=round(after, 1) if after else None,
        memory_growth=growth,
        failures=test.failures(summary, growth),
    )
