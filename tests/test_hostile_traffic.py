"""The real service under hostile and heavy traffic: uploads built to exhaust memory, valid
hostile files, overload, and clients that give up (`bentoml serve` with the default params).

Memory is the serving processes' summed resident memory (RSS), sampled every 10 ms while the
uploads are in flight, against the memory limit deploy/k8s/deployment.yaml gives a pod.
"""

from __future__ import annotations

import io
import json
import re
import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
import yaml
from conftest import REPO, wait_for
from hostile_images import hostile_uploads
from hypothesis import HealthCheck, given, settings
from PIL import Image
from test_monitoring import metric_samples

from harness.servers import PeakMemory
from harness.uploads import encode, marked, worst_uploads
from pipeline.core.params import load_params
from pipeline.core.prediction_log import format_time
from pipeline.core.preprocess import decode_bytes

pytest_plugins = ["service_fixtures"]
pytestmark = pytest.mark.service


def pod_memory_limit() -> int:
    """The container's memory limit in deploy/k8s/deployment.yaml, in bytes (e.g. 1Gi)."""
    deployment = yaml.safe_load((REPO / "deploy" / "k8s" / "deployment.yaml").read_text())
    limit = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    value = limit["memory"]
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(float(value[:-2]) * units[value[-2:]]) if value[-2:] in units else int(value)


@pytest.fixture(scope="module")
def worst() -> dict[str, bytes]:
    """The worst uploads of each kind the decode budget admits, and two it refuses."""
    serve = load_params().serve
    uploads = worst_uploads(serve.max_decode_mb)
    for name, data in uploads.items():
        assert len(data) < serve.max_upload_bytes, f"{name}: {len(data):,} bytes, over the limit"
        need = decode_bytes(Image.open(io.BytesIO(data)))
        assert (need > serve.max_decode_mb * 1e6) == name.startswith("refused"), (name, need)
    return uploads


def test_worst_case_uploads_at_once_stay_under_the_pods_memory_limit(served, worst):
    """Each worst admitted upload and each refused one, all at once (no more than a worker always
    admits: serve.min_in_flight), against the default two workers, twice: every answer 200 (or
    413 for the refused), the service ready afterwards, and the serving processes' memory under
    the Deployment's limit throughout."""
    jobs = list(worst.items())
    assert len(jobs) <= load_params().serve.min_in_flight

    def post(job: tuple[str, bytes]) -> tuple[str, int]:
        name, data = job
        files = {"image": ("upload", data, "application/octet-stream")}
        return name, requests.post(f"{served.url}/classify", files=files, timeout=120).status_code

    limit = pod_memory_limit()
    with PeakMemory(served.pid) as memory, ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(post, jobs)) + list(pool.map(post, jobs))
    for name, status in answers:
        assert status == (413 if name.startswith("refused") else 200), (name, status)
    assert requests.get(f"{served.url}/readyz", timeout=30).status_code == 200
    assert memory.peak < limit, (
        f"{len(jobs)} worst-case uploads took the serving processes from {memory.start / 2**20:.0f} "
        f"to {memory.peak / 2**20:.0f} MiB, over the pod's limit of {limit / 2**20:.0f} MiB"
    )


def total(url: str, counter: str) -> float:
    """A counter of the service's /metrics, summed over its labels (`counter`: the family name,
    without _total)."""
    return sum(s.value for s in metric_samples(url, counter) if s.name.endswith("_total"))


def records_of(directory: Path, pid: int) -> list[dict]:
    """The prediction records a worker process wrote (all its files)."""
    lines = []
    for path in directory.glob(f"predictions-*-{pid}*.jsonl"):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines


def recorded_after(served, directory: Path, images: list, since: float) -> None:
    """A barrier: send /predict until every worker has recorded an answer given after `since`
    (each worker records in its own order, so what it answered before is written by then)."""
    workers = [p.pid for p in psutil.Process(served.pid).children(recursive=True)]
    stamp = format_time(since)

    def done() -> bool:
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda _: requests.post(f"{served.url}/predict", json=images, timeout=60),
                    range(8),
                )
            )
        return all(
            any(r["time"] >= stamp for r in records_of(directory, pid))
            for pid in workers
            if list(directory.glob(f"predictions-*-{pid}*.jsonl"))
        )

    wait_for(done, "every worker recording the answers sent after the upload")


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(upload=hostile_uploads())
def test_valid_hostile_files_get_an_answer_or_a_4xx_and_only_answers_are_recorded(
    served, pipeline_run, test_images, upload
):
    """Generated files that pass the format checks reach the decoders of the real service:
    200 or 4xx from /classify and /explain, never a 5xx; memory stays under the pod's limit;
    only an answered upload is recorded."""
    files = {"image": ("upload", upload.data, "application/octet-stream")}
    directory = pipeline_run / "monitoring"  # serve.monitoring.records_dir of the served workspace
    began = time.time()
    with PeakMemory(served.pid) as memory:
        classify = requests.post(f"{served.url}/classify", files=files, timeout=120)
        explain = requests.post(f"{served.url}/explain", files=files, timeout=120)
    ended = time.time()
    for resp in (classify, explain):
        assert resp.status_code == 200 or 400 <= resp.status_code < 500, (upload.what, resp.text)
    assert classify.status_code == explain.status_code, upload.what
    assert memory.peak < pod_memory_limit(), upload.what
    recorded_after(served, directory, {"images": [test_images[0][0].tolist()]}, ended)
    window = (format_time(began), format_time(ended))
    mine = [
        r
        for pid in {p.pid for p in psutil.Process(served.pid).children(recursive=True)}
        for r in records_of(directory, pid)
        if r["endpoint"] == "classify" and window[0] <= r["time"] <= window[1]
    ]
    assert len(mine) == (classify.status_code == 200), (upload.what, classify.status_code)


def held_request(url: str, body_size: int) -> socket.socket:
    """A POST /classify whose client sends its headers and then stalls mid-body."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    head = (
        f"POST /classify HTTP/1.1\r\nHost: {host}\r\nContent-Length: {body_size}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n"
    )
    sock.sendall(head.encode())
    return sock


def complete(answer: bytes) -> bool:
    """Whether an HTTP answer's head and its Content-Length of body have all arrived."""
    head, found, body = answer.partition(b"\r\n\r\n")
    length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
    return bool(found and length and len(body) >= int(length[1]))


def test_beyond_the_workers_places_requests_are_shed_at_once_with_retry_after(served):
    """More requests in progress than the two workers admit (serve.max_in_flight each; here
    clients that stall mid-body hold the places): the rest are answered 503 at once, with
    Retry-After, and counted in /metrics; once the places are free, a request is answered."""
    serve = load_params().serve
    n = 4 * serve.max_in_flight  # twice what two workers admit
    shed_before = total(served.url, "fashion_requests_shed")
    held = [held_request(served.url, 10_000) for _ in range(n)]
    answers: dict[socket.socket, bytes] = {}
    try:
        # A shed request is answered at once; an admitted one waits for its body (BentoML's
        # timeout would answer it 504 after serve.request_timeout_s: read well before that).
        deadline = time.monotonic() + min(5.0, serve.request_timeout_s / 2)
        while (left := deadline - time.monotonic()) > 0:
            waiting = [s for s in held if not complete(answers.get(s, b""))]
            for sock in select.select(waiting, [], [], left)[0]:
                answers[sock] = answers.get(sock, b"") + sock.recv(65536)
    finally:
        for sock in held:
            sock.close()
    shed = [answer.decode(errors="replace") for answer in answers.values()]
    assert len(shed) >= n - 2 * serve.max_in_flight, f"{len(shed)} of {n} answered at once"
    for answer in shed:
        assert answer.startswith("HTTP/1.1 503"), answer[:200]
        assert "retry-after: 1" in answer.lower() and "serve.max_in_flight" in answer
    wait_for(
        lambda: total(served.url, "fashion_requests_shed") == shed_before + len(shed),
        f"{len(shed)} shed requests counted",
    )
    one = encode(marked("RGB", 100, (1, 2, 3)), "PNG")
    files = {"image": ("one.png", one, "image/png")}
    wait_for(
        lambda: requests.post(f"{served.url}/classify", files=files, timeout=60).ok,
        "a request answered once the stalled clients left",
    )


def test_a_client_that_gives_up_leaves_the_queue(served):
    """Clients that disconnect while their upload waits for a decoder: the service notices,
    counts them, and stops working on them: they are never answered nor recorded."""
    slow = encode(marked("RGB", 3000, (30, 200, 60)), "PNG")  # about 0.2 s to decode
    gone_before = total(served.url, "fashion_requests_client_gone")
    recorded = total(served.url, "fashion_predictions")
    n = 12

    def give_up(_: int) -> bool:
        files = {"image": ("slow.png", slow, "image/png")}
        try:
            requests.post(f"{served.url}/classify", files=files, timeout=(10, 0.05))
        except requests.exceptions.ReadTimeout:
            return True  # urllib3 closes the connection
        return False

    with ThreadPoolExecutor(n) as pool:
        gave_up = sum(pool.map(give_up, range(n)))
    assert gave_up > 0
    wait_for(
        lambda: total(served.url, "fashion_requests_client_gone") > gone_before,
        f"a disconnect noticed among {gave_up} clients that gave up",
    )
    gone = total(served.url, "fashion_requests_client_gone") - gone_before
    assert total(served.url, "fashion_predictions") - recorded <= n - gone
