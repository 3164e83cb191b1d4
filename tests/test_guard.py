"""The guard in front of the prediction routes, in-process: upload limits, load shedding, and a
request whose client went away (service/guard.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
import yaml
from conftest import REPO
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from service import settings
from service.admission import COMPLETIONS, Admission
from service.guard import RequestGuard

pytestmark = pytest.mark.unit


@pytest.fixture
def serve_params(tmp_path, monkeypatch) -> Iterator[callable]:
    """Call with serve.* overrides; the guard built afterwards reads them."""

    def use(**serve: object) -> None:
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["serve"].update(serve)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        monkeypatch.setenv("FASHION_MNIST_PARAMS", str(tmp_path / "params.yaml"))
        settings.serve_params.cache_clear()

    yield use
    settings.serve_params.cache_clear()


class Gate:
    """An app behind the guard that holds every request until `open` is set."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.started = 0
        self.cancelled = 0

    async def handle(self, request: Request) -> PlainTextResponse:
        body = await request.body()
        self.started += 1
        try:
            await self.open.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return PlainTextResponse(str(len(body)))


def guarded(endpoint) -> RequestGuard:
    return RequestGuard(Starlette(routes=[Route("/predict", endpoint, methods=["POST"])]))


async def until(condition, what: str, seconds: float = 30) -> None:
    """Wait for `condition()`, failing with `what` never happened after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds} s")
        await asyncio.sleep(0.005)


async def post(app, body: bytes, chunked: bool = False) -> httpx.Response:
    async def chunks():
        for i in range(0, len(body), 30):
            yield body[i : i + 30]

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://guard") as client:
        content = chunks() if chunked else body
        headers = {"Content-Type": "application/json"}
        return await client.post("/predict", content=content, headers=headers)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_upload_limit_comes_from_params(serve_params):
    """The guard reads serve.max_upload_bytes from the params file (here: a 100-byte limit),
    whether the client declares the body's length or streams it in chunks."""
    serve_params(max_upload_bytes=100)

    async def echo(request):
        return PlainTextResponse(str(len(await request.body())))

    app = guarded(echo)
    ok, streamed_ok = asyncio.run(post(app, b"x" * 100)), asyncio.run(post(app, b"x" * 100, True))
    too_big = asyncio.run(post(app, b"x" * 101))
    streamed_too_big = asyncio.run(post(app, b"x" * 101, True))
    assert (ok.status_code, ok.text) == (200, "100")
    assert (streamed_ok.status_code, streamed_ok.text) == (200, "100")
    for resp in (too_big, streamed_too_big):
        assert resp.status_code == 413
        assert "100 bytes" in resp.json()["error"]


def test_beyond_max_in_flight_requests_are_shed_at_once_with_retry_after(serve_params):
    serve_params(min_in_flight=1, max_in_flight=2)
    gate = Gate()
    app = guarded(gate.handle)
    shed_before = counter("fashion_requests_shed_total", reason="in_flight")

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
        held = [asyncio.ensure_future(post(app, b"[]")) for _ in range(2)]
        await until(lambda: gate.started == 2, "two requests reaching the app")
        third = await post(app, b"[1]")  # answered while the two are held
        gate.open.set()
        first_two = await asyncio.gather(*held)
        return first_two, third, await post(app, b"[1, 2]")

    first_two, third, after = asyncio.run(scenario())
    assert [r.status_code for r in first_two] == [200, 200]
    assert third.status_code == 503 and third.headers["Retry-After"] == "1"
    assert "serve.max_in_flight" in third.json()["error"]
    assert after.status_code == 200  # the places are given back
    assert counter("fashion_requests_shed_total", reason="in_flight") == shed_before + 1


def test_bodies_in_flight_are_capped_but_a_lone_request_always_fits(serve_params):
    serve_params(max_in_flight_mb=0.00025, max_upload_bytes=1000)  # 250 bytes of bodies at once
    gate = Gate()
    app = guarded(gate.handle)

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        held = asyncio.ensure_future(post(app, b"x" * 200))
        await until(lambda: gate.started == 1, "the request reaching the app")
        second = await post(app, b"y" * 100)  # 300 bytes would be held
        too_big = await post(app, b"z" * 1001)  # over the upload limit: 413, not 503
        gate.open.set()
        return await held, second, too_big

    first, second, too_big = asyncio.run(scenario())
    assert first.status_code == 200 and first.text == "200"  # alone, 200 > 0 free bytes: admitted
    assert second.status_code == 503 and "serve.max_in_flight_mb" in second.json()["error"]
    assert too_big.status_code == 413


def test_a_request_whose_client_disconnects_is_cancelled(serve_params):
    serve_params()
    gate = Gate()
    app = guarded(gate.handle)
    gone_before = counter("fashion_requests_client_gone_total")
    body = json.dumps({"images": []}).encode()

    async def scenario() -> list[dict]:
        disconnect = asyncio.Event()
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict] = []

        async def receive() -> dict:
            if messages:
                return messages.pop()
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/predict",
            "raw_path": b"/predict",
            "query_string": b"",
            "root_path": "",
            "scheme": "http",
            "http_version": "1.1",
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "server": ("guard", 80),
            "client": ("client", 1),
        }
        call = asyncio.ensure_future(app(scope, receive, send))
        await until(lambda: gate.started == 1, "the request reaching the app")
        disconnect.set()  # the client goes away while the request is being worked on
        await asyncio.wait_for(call, 10)
        return sent

    sent = asyncio.run(scenario())
    assert gate.cancelled == 1, "the request kept running after its client left"
    assert sent == []  # nothing to answer
    assert counter("fashion_requests_client_gone_total") == gone_before + 1


def test_the_limit_follows_the_workers_pace():
    """About queue_target_s of work at the pace of the last answers, within min and max."""
    now = [0.0]
    admission = Admission(4, 32, 10**6, 0.5, clock=lambda: now[0])
    assert admission.limit() == 32  # no pace measured yet

    def answer(one_every: float, count: int = COMPLETIONS) -> None:
        for _ in range(count):  # one request at a time, each taking one_every seconds
            assert admission.refuse(10) is None
            now[0] += one_every
            admission.release(10, answered=True)

    answer(1 / 20)
    assert admission.limit() == 10  # 0.5 s x 20/s
    answer(1 / 1000)  # 1,000 a second: capped
    assert admission.limit() == 32
    answer(1 / 2)  # 2 a second: floored
    assert admission.limit() == 4
    for _ in range(4):
        assert admission.refuse(10) is None
    busy = admission.refuse(10)
    assert busy.status == 503 and "serve.queue_target_s" in str(busy)
    admission.release(10, answered=False)  # a request whose client left: no pace from it
    assert admission.refuse(10) is None and len(admission.completed) == COMPLETIONS
    for _ in range(4):
        admission.release(10, answered=True)


def test_idle_time_between_sparse_requests_is_not_counted_as_work():
    """A request a second, each answered in 10 ms: the pace is 100 a second, not 1."""
    now = [0.0]
    admission = Admission(4, 64, 10**6, 0.5, clock=lambda: now[0])
    for _ in range(COMPLETIONS):
        assert admission.refuse(10) is None
        now[0] += 0.01
        admission.release(10, answered=True)
        now[0] += 0.99  # idle
    assert admission.pace() == pytest.approx(100)
    assert admission.limit() == 50
    # Overlapping requests: busy time counts once, so eight at once in 10 ms is 800 a second.
    for _ in range(COMPLETIONS // 8):
        for _ in range(8):
            assert admission.refuse(10) is None
        now[0] += 0.01
        for _ in range(8):
            admission.release(10, answered=True)
    assert admission.limit() == 64
