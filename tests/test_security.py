"""service/security.py in the real service: the headers on every kind of answer of the session's
`bentoml serve` (no token: the API open, as by default), and one more `bentoml serve` started
with a token from a file, as a Kubernetes Secret mounts it: 401 without or with a wrong token,
before any body is read; 200 with it; probes, /metrics and the page open; the page asking for
the token in Chromium. A bad token setting stops the service when it starts."""

from __future__ import annotations

import re
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from browser_fixtures import DESKTOP, explained, open_page, png
from conftest import BIN, base_env, free_port, start_server, stop

from pipeline.core.params import load_params
from service.security import OPENAPI_POLICY, PAGE_POLICY, TOKEN_FILE_ENV

pytest_plugins = ["service_fixtures", "browser_fixtures"]
pytestmark = pytest.mark.service

TOKEN = secrets.token_urlsafe(32)
ROUTES = ("/classify", "/explain", "/predict")
TEXT = {"Content-Type": "text/plain"}


@pytest.fixture(scope="module")
def token_url(
    pipeline_run: Path, pipeline_env: dict, champion: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`bentoml serve` of the champion with FASHION_MNIST_API_TOKEN_FILE set: one worker, its own
    BentoML home (servers sharing one share their metrics directories) and records directory."""
    root = tmp_path_factory.mktemp("token_serve")
    home = root / "bentoml_home"
    shutil.copytree(Path(pipeline_env["BENTOML_HOME"]) / "models", home / "models")
    secret = root / "token"
    secret.write_text(TOKEN + "\n")  # as `kubectl create secret generic --from-file` keeps it
    env = {
        **pipeline_env,
        "BENTOML_HOME": str(home),
        TOKEN_FILE_ENV: str(secret),
        "FASHION_MNIST_WORKERS": "1",
        "FASHION_MNIST_MONITORING_DIR": str(root / "records"),
    }
    env.pop("FASHION_MNIST_API_TOKEN", None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "bentoml"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = start_server(cmd, pipeline_run, env, root / "serve.log", f"{url}/readyz", 240)
    yield url
    stop(proc)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def call(url: str, route: str, image: bytes, pixels: list, headers: dict) -> requests.Response:
    if route == "/predict":
        return requests.post(
            f"{url}{route}", json={"images": [pixels]}, headers=headers, timeout=60
        )
    files = {"image": ("item.png", image, "image/png")}
    return requests.post(f"{url}{route}", files=files, headers=headers, timeout=60)


def assert_headers(resp: requests.Response, policy: str = PAGE_POLICY) -> None:
    what = f"{resp.request.method} {urlsplit(resp.url).path} -> {resp.status_code}"
    assert resp.headers.get("x-content-type-options") == "nosniff", what
    assert resp.headers.get("referrer-policy") == "no-referrer", what
    assert resp.headers.get("content-security-policy") == policy, what


# --- the open service: headers on every answer ----------------------------------------------


def test_every_kind_of_answer_carries_the_security_headers(service_url, pipeline_run, test_images):
    x, _ = test_images
    limit = load_params(pipeline_run / "params.yaml").serve.max_upload_bytes
    get = {
        path: requests.get(f"{service_url}{path}", timeout=30, allow_redirects=False)
        for path in (
            "/ui",
            "/ui/",
            "/ui/app.js",
            "/metadata",
            "/samples",
            "/readyz",
            "/livez",
            "/metrics",
            "/docs.json",
            "/nowhere",
            "/predict",
        )
    }
    answers = [
        *get.values(),
        call(service_url, "/predict", b"", x[0].tolist(), {}),  # no token set: open, as before
        call(service_url, "/classify", png(x[0]), [], {}),
        requests.post(f"{service_url}/predict", data="x", headers=TEXT, timeout=30),  # 415
        requests.post(f"{service_url}/classify", files={"picture": ("a", b"a")}, timeout=30),
        requests.post(
            f"{service_url}/classify", files={"image": ("a", b"\0" * (limit + 1))}, timeout=60
        ),
        requests.post(f"{service_url}/predict", json={"images": [[[0] * 28] * 27]}, timeout=30),
    ]
    statuses = [a.status_code for a in answers]
    expected = [307, *[200] * 8, 404, 405]  # the GETs, in the order of `get`
    expected += [200, 200, 415, 400, 413, 400]  # the POSTs
    assert statuses == expected, statuses
    for resp in answers:
        assert_headers(resp)
    assert_headers(requests.get(f"{service_url}/", timeout=30), OPENAPI_POLICY)


# --- the token ------------------------------------------------------------------------------


def test_the_prediction_routes_need_the_token(token_url, service_url, test_images):
    x, _ = test_images
    image, pixels = png(x[3]), x[3].tolist()
    for route in ROUTES:
        missing = call(token_url, route, image, pixels, {})
        assert missing.status_code == 401, missing.text
        assert missing.headers["www-authenticate"] == 'Bearer realm="fashion-classifier"'
        assert "`Authorization: Bearer <token>`" in missing.json()["error"]
        assert_headers(missing)
        wrong = call(token_url, route, image, pixels, bearer(TOKEN[:-1]))
        assert wrong.status_code == 401 and "token is wrong" in wrong.json()["error"]
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        basic = call(token_url, route, image, pixels, {"Authorization": f"Basic {TOKEN}"})
        assert basic.status_code == 401
        good = call(token_url, route, image, pixels, bearer(TOKEN))
        assert good.status_code == 200, good.text
        assert_headers(good)
        # the same model as the open session server, answering the same
        same = call(service_url, route, image, pixels, {}).json()
        answer = good.json()
        if route == "/predict":
            answer, same = answer["predictions"][0], same["predictions"][0]
        assert answer["class_id"] == same["class_id"]
        assert answer["probabilities"] == pytest.approx(same["probabilities"], abs=1e-6)
    # behind the token, the guard still refuses bad input, with the headers
    bad = requests.post(f"{token_url}/predict", data="x", headers=TEXT | bearer(TOKEN), timeout=30)
    assert bad.status_code == 415 and "application/json" in bad.json()["error"]
    assert_headers(bad)
    # the token comes first: a bad request without it is a 401, not the guard's 415
    assert (
        requests.post(f"{token_url}/predict", data="x", headers=TEXT, timeout=30).status_code == 401
    )


def test_probes_metrics_and_the_page_stay_open(token_url):
    open_paths = (
        "/readyz",
        "/livez",
        "/metrics",
        "/metadata",
        "/samples",
        "/ui/",
        "/ui/app.js",
        "/",
        "/docs.json",
    )
    for path in open_paths:
        resp = requests.get(f"{token_url}{path}", timeout=30)
        assert resp.status_code == 200, (path, resp.text[:200])
    for _ in range(3):
        requests.post(f"{token_url}/predict", json={"images": []}, timeout=30)
    metrics = requests.get(f"{token_url}/metrics", timeout=30).text
    counts = re.findall(
        r'^fashion_unauthorized_requests_total\{reason="missing"\} (\S+)$', metrics, re.MULTILINE
    )
    assert counts and float(counts[0]) >= 3, metrics[-2000:]


def test_a_request_without_the_token_is_refused_before_its_body_is_read(token_url):
    """Only the headers are sent, announcing a body that never comes: the 401 arrives anyway
    (the guard, which reads the body first, would wait for it)."""
    host, port = urlsplit(token_url).hostname, urlsplit(token_url).port
    with socket.create_connection((host, port), timeout=30) as conn:
        conn.sendall(
            b"POST /classify HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            assert chunk, f"the connection closed with no answer: {head!r}"
            head += chunk
    assert head.startswith(b"HTTP/1.1 401 "), head
    assert b"www-authenticate: bearer" in head.lower()


def test_a_bad_token_setting_stops_the_service_when_it_starts(pipeline_run, tmp_path):
    """`bentoml serve` (and each worker) imports service/service.py first: an empty token file
    fails that import with an error naming the variable, so the server never starts."""
    empty = tmp_path / "token"
    empty.write_text("\n")
    env = base_env(**{TOKEN_FILE_ENV: str(empty)})
    env.pop("FASHION_MNIST_API_TOKEN", None)
    proc = subprocess.run(
        [str(BIN / "python"), "-c", "import service.service"],
        cwd=pipeline_run,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert f"ValueError: {TOKEN_FILE_ENV}='{empty}': the file is empty" in proc.stderr, proc.stderr


# --- the page with a token ------------------------------------------------------------------


def test_the_page_asks_for_the_token_and_then_works(browser, token_url, test_images, tmp_path):
    x, _ = test_images
    image = tmp_path / "item.png"
    image.write_bytes(png(x[5]))
    page, console = open_page(browser, token_url, viewport=DESKTOP)
    try:
        with page.expect_response("**/explain") as first:
            page.set_input_files("#file", image)
        assert first.value.status == 401
        page.wait_for_selector("#token-form:not([hidden])")
        assert first.value.json()["error"] == page.inner_text("#error")  # the API's own words
        assert page.evaluate("document.activeElement.id") == "token"  # typing goes there
        assert page.get_by_label("This service needs an API token").get_attribute("id") == "token"

        page.keyboard.type("not-the-token")
        with page.expect_response("**/explain") as refused:
            page.keyboard.press("Enter")  # the same image is sent again, with that token
        assert refused.value.status == 401
        page.wait_for_function(
            "document.getElementById('error').textContent.includes('The token was refused')"
        )
        assert page.is_visible("#token-form")
        assert page.evaluate("sessionStorage.getItem('fashion-mnist-api-token')") is None

        page.focus("#token")
        page.keyboard.type(TOKEN)
        page.keyboard.press("Tab")  # to the button, by keyboard
        assert page.evaluate("document.activeElement.id") == "token-use"
        with page.expect_request("**/explain") as sent:
            page.keyboard.press("Enter")
        assert sent.value.headers["authorization"] == f"Bearer {TOKEN}"
        shown = explained(page)
        classified = call(token_url, "/classify", image.read_bytes(), [], bearer(TOKEN)).json()
        assert shown["top"] == classified["class_name"]
        assert page.is_hidden("#token-form") and page.is_hidden("#error")
        assert page.evaluate("sessionStorage.getItem('fashion-mnist-api-token')") == TOKEN

        # kept for the tab: the next image goes through without asking, also after a reload
        page.reload()
        with page.expect_response("**/explain") as again:
            page.click("#random")
        assert again.value.status == 200
        explained(page)
        assert page.is_hidden("#token-form")
        # the browser logs each 401 as a failed resource; nothing else may appear (a CSP
        # violation would: Chromium logs each one as a console error)
        unexpected = [
            e for e in console.errors if not re.match(r"Failed to load resource: .* 401", e)
        ]
        assert unexpected == [] and len(console.errors) == 2
    finally:
        page.context.close()
