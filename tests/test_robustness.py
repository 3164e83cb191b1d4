"""The service under fuzzing, load and several workers: no 5xx, and it keeps serving.

Bounded versions of benchmarks/load_test.py (harness/load.py) and of fuzzing from the service's own OpenAPI schema
(schemathesis) and of random bytes to /classify (hypothesis), against a real `bentoml serve`.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from conftest import BIN, free_port, start_server, stop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from harness.load_mix import LoadTest, load_test
from pipeline.core.params import load_params

pytest_plugins = ["service_fixtures"]
pytestmark = pytest.mark.service


def test_openapi_fuzz_gets_no_server_error(service_url, tmp_path):
    """schemathesis generates requests from the service's own OpenAPI schema: none may get a 5xx."""
    cmd = [str(BIN / "schemathesis"), "run", f"{service_url}/docs.json"]
    cmd += ["--checks", "not_a_server_error", "--max-examples", "50", "--request-timeout", "60"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", out)
    assert cases and cases.group(1) == cases.group(2), out[-3000:]
    # The one warning allowed: /feedback takes only prediction ids this service signed (and
    # 28x28 pixels), so it refuses, with a 4xx, nearly all that the schema lets be generated.
    if not re.search(r"=+ No issues found in", out):
        assert re.search(r"=+ 1 warning in", out), out[-3000:]
        warned = re.search(r"Schema validation mismatch:.*?\n\n((?:  - .*\n)+)", out)
        assert warned and warned.group(1).split() == ["-", "POST", "/feedback"], out[-3000:]
    tested = re.search(r"Tested: (\d+)", proc.stdout)
    assert tested and int(tested.group(1)) >= 3, proc.stdout[
        -2000:
    ]  # /classify, /predict, /metadata...


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.one_of(
        st.binary(max_size=4096),
        # a real PNG with some bytes overwritten: passes the magic-number sniff, then breaks
        st.tuples(st.integers(0, 100), st.integers(0, 400), st.binary(min_size=1, max_size=16)).map(
            lambda t: (lambda png: png[: t[1]] + t[2] + png[t[1] + len(t[2]) :])(_png(t[0]))
        ),
    ),
    content_type=st.sampled_from(["image/png", "application/octet-stream", "text/plain"]),
)
def test_random_bytes_to_classify_get_no_server_error(service_url, data, content_type):
    files = {"image": ("upload", data, content_type)}
    response = requests.post(f"{service_url}/classify", files=files, timeout=60)
    assert response.status_code in (200, 400, 413, 415, 422), response.text[:300]
    assert response.headers["content-type"].startswith("application/json")


def test_server_alive_after_fuzzing(service_url, test_images):
    assert requests.get(f"{service_url}/readyz", timeout=10).status_code == 200
    x, _ = test_images
    resp = requests.post(f"{service_url}/predict", json={"images": [x[0].tolist()]}, timeout=30)
    assert resp.status_code == 200


def test_bounded_load_mix_good_and_bad(service_url, test_images, pipeline_run):
    serve = load_params(pipeline_run / "params.yaml").serve
    x, _ = test_images
    test = LoadTest(
        requests=600,
        concurrency=16,
        bad_fraction=0.1,
        max_images=serve.max_images_per_request,
        max_upload_bytes=serve.max_upload_bytes,
        warmup_requests=50,
    )
    report = load_test(service_url, x[:200], test)
    assert report.server_errors == 0, report.status_counts
    assert report.good_not_200 == 0, report.status_counts
    assert report.bad_not_4xx == 0, report.status_counts
    assert sum(v for k, v in report.status_counts.items() if k.startswith("bad:")) == 60


def test_two_workers_both_answer(pipeline_run, pipeline_env, champion, tmp_path, test_images):
    """serve.workers = 2: two worker processes, each with the model; both answer requests."""
    # A store of its own: servers sharing BENTOML_HOME share (and clean up) metrics directories.
    home = tmp_path / "bentoml_home"
    shutil.copytree(Path(pipeline_env["BENTOML_HOME"]) / "models", home / "models")
    params = yaml.safe_load((pipeline_run / "params.yaml").read_text())
    params["serve"]["workers"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {
        **pipeline_env,
        "BENTOML_HOME": str(home),
        "FASHION_MNIST_PARAMS": str(tmp_path / "params.yaml"),
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "bentoml"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "serve.log"
    proc = start_server(cmd, pipeline_run, env, log, f"{url}/readyz", 240)

    def answering() -> set[str]:
        # Access log lines name the worker: [entry_service:fashion_classifier:<worker id>]
        pattern = r"\[entry_service:fashion_classifier:(\d+)\].*path=/predict"
        return set(re.findall(pattern, log.read_text()))

    try:
        x, _ = test_images
        body = {"images": [x[0].tolist()]}

        def call(_: int) -> int:
            return requests.post(f"{url}/predict", json=body, timeout=60).status_code

        # The kernel hands connections to whichever worker accepts first; a busy machine can
        # send one round to a single worker, so keep sending rounds until both have answered.
        statuses: list[int] = []
        with ThreadPoolExecutor(16) as pool:
            for _ in range(10):
                statuses += pool.map(call, range(200))
                if answering() == {"1", "2"}:
                    break
    finally:
        stop(proc)
    assert statuses == [200] * len(statuses)
    assert answering() == {"1", "2"}, f"requests answered by worker(s) {answering()}"
