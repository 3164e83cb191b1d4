"""The load generator: requests sent to a running service on raw HTTP/1.1, back to back (closed
loop) or on a fixed schedule (open loop), and what their answers amount to.

A closed loop (N clients, each waiting for its answer before sending again) slows down with the
server and so can never overload it; an open loop sends the i-th request at i / rate seconds
whatever the answers, on a connection of its own from a pool that grows as needed, like the
independent users of a public endpoint. Latency counts from when a request was due, so a client
that could not even send it in time counts that wait too (no coordinated omission).

Each request's bytes are built once and the answers are parsed by hand on asyncio streams: the
generator shares the machine's CPUs with the server, so each request must cost it little. In a
closed loop of 32 clients on the no-op BentoML service's /predict (benchmarks/serve_benchmark.py)
on the 2-vCPU AMD EPYC, this client took 0.18-0.27 ms of CPU per request, aiohttp 0.39-0.66 ms.

What to send for a load test (good and bad requests mixed) is in harness/load_mix.py.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
BOUNDARY = "loadboundary7MA4YWxkTrZu0gW"


@dataclass(frozen=True)
class Request:
    """One HTTP request, and what it is: `kind` names it in reports ("predict", "not an image"),
    `bad` marks a request malformed on purpose (it must get a 4xx), `images` is how many images
    it carries (for images per second)."""

    path: str
    body: bytes = b""
    content_type: str = "application/json"
    kind: str = "good"
    bad: bool = False
    images: int = 1
    method: str = "POST"

    @classmethod
    def upload(
        cls, path: str, data: bytes, filename: str, file_type: str, **what: object
    ) -> Request:
        """A multipart/form-data upload of one file in the form field `image`."""
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="{filename}"\r\nContent-Type: {file_type}\r\n\r\n'
        )
        body = head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()
        return cls(path, body, f"multipart/form-data; boundary={BOUNDARY}", **what)

    def head(self, host: str) -> bytes:
        """The request line and headers (keep-alive), for a server known as `host`."""
        return (
            f"{self.method} {self.path} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n\r\n"
        ).encode()


@dataclass(frozen=True)
class Answer:
    """What came back for one request: when it was due (s from the start), its status (0: no
    answer within the client's timeout, or the connection failed), and seconds from due to the
    last byte."""

    request: Request
    due: float
    status: int
    latency: float

    @property
    def as_expected(self) -> bool:
        """A good request answered 200, a bad one a 4xx."""
        return 400 <= self.status < 500 if self.request.bad else self.status == 200


class Connections:
    """Kept-alive connections to one server, opened when none is idle."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.netloc = parts.netloc
        self.idle: list[Stream] = []
        self.wire: dict[int, bytes] = {}  # id(request) -> its bytes, built once per request

    async def take(self) -> Stream:
        while self.idle:
            stream = self.idle.pop()
            if not stream[0].at_eof():  # the server closed it meanwhile: not reusable
                return stream
            stream[1].close()
        return await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        while self.idle:
            self.idle.pop()[1].close()

    async def exchange(self, request: Request, timeout: float) -> int:
        """Send `request` and read its answer within `timeout` seconds; its status."""
        stream = None
        try:
            async with asyncio.timeout(timeout):
                stream = await self.take()
                if (wire := self.wire.get(id(request))) is None:
                    wire = self.wire[id(request)] = request.head(self.netloc) + request.body
                stream[1].write(wire)  # in one piece: one send, one read for the server
                status, keep_alive = await read_answer(stream[0])
        except (TimeoutError, OSError, EOFError, asyncio.LimitOverrunError, ValueError):
            if stream is not None:  # a connection in an unknown state is not reused
                stream[1].close()
            return 0
        if keep_alive:
            self.idle.append(stream)
        else:
            stream[1].close()
        return status


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 answer whole: (status, whether the connection may be reused)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    keep_alive = head.startswith(b"HTTP/1.1") and _header(lower, b"connection") != b"close"
    if _header(lower, b"transfer-encoding") != b"chunked":
        await reader.readexactly(int(_header(lower, b"content-length") or 0))
        return int(head[9:12]), keep_alive
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        await reader.readexactly(size + 2)  # the chunk and its CRLF
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, up to the empty line
        pass
    return int(head[9:12]), keep_alive


def _header(lower_head: bytes, name: bytes) -> bytes | None:
    """The value of header `name` in a lower-cased head, or None."""
    start = lower_head.find(b"\r\n" + name + b":")
    if start < 0:
        return None
    start += len(name) + 3
    return lower_head[start : lower_head.index(b"\r\n", start)].strip()


async def _answer(
    pool: Connections, request: Request, due: float, t0: float, timeout: float
) -> Answer:
    status = await pool.exchange(request, timeout - (time.perf_counter() - t0 - due))
    return Answer(request, due, status, time.perf_counter() - t0 - due)


async def _clients(
    pool: Connections,
    order: Iterator[Request],
    concurrency: int,
    seconds: float | None,
    timeout: float,
) -> list[Answer]:
    answers: list[Answer] = []
    t0 = time.perf_counter()

    async def client() -> None:
        for request in order:
            due = time.perf_counter() - t0
            if seconds is not None and due >= seconds:
                return
            answers.append(await _answer(pool, request, due, t0, timeout))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return answers


async def closed_loop(
    url: str,
    requests: Sequence[Request],
    concurrency: int,
    seconds: float | None = None,
    warmup: float = 0.0,
    timeout: float = 60.0,
) -> list[Answer]:
    """`concurrency` clients, each sending the next request as soon as its last is answered:
    every request of `requests` once (`seconds` None), or `requests` in turn for `seconds`;
    first, for `warmup` seconds on the same connections, answers not kept."""
    pool = Connections(url)
    try:
        if warmup:
            await _clients(pool, itertools.cycle(requests), concurrency, warmup, timeout)
        order = iter(requests) if seconds is None else itertools.cycle(requests)
        return await _clients(pool, order, concurrency, seconds, timeout)
    finally:
        pool.close()


async def open_loop(
    url: str, requests: Sequence[Request], rate: float, seconds: float, timeout: float
) -> list[Answer]:
    """Send `requests` in turn, `rate` a second for `seconds`, evenly spaced, each answered
    within `timeout` seconds of being due or counted as unanswered (status 0)."""
    pool = Connections(url)
    tasks: list[asyncio.Task[Answer]] = []
    t0 = time.perf_counter()
    for i, request in zip(range(int(rate * seconds)), itertools.cycle(requests)):
        due = i / rate
        if (wait := t0 + due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.ensure_future(_answer(pool, request, due, t0, timeout)))
    try:
        return await asyncio.gather(*tasks)
    finally:
        pool.close()


def _ms(latencies: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(latencies, q)) * 1000, 3) if len(latencies) else None


@dataclass(frozen=True)
class Summary:
    """What a run's answers amount to. Latencies are those of the answers as expected (a good
    request's 200, a bad one's 4xx), so that a fast refusal does not flatter them."""

    requests: int
    seconds: float  # the run's: its schedule (open loop), or first due to last answer
    requests_per_s: float  # sent per second: what a closed loop reached, an open loop offered
    images_per_s: float
    as_expected: int
    good_not_200: int
    bad_not_4xx: int
    server_errors: int  # a 5xx, or no answer (status 0)
    shed_503: int
    goodput_per_s: float | None  # good requests answered 200 within the SLO, per second
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    status_counts: dict[str, int]  # "good -> 200", "bad:not an image -> 415": how many

    @classmethod
    def of(
        cls, answers: Sequence[Answer], seconds: float | None = None, slo: float | None = None
    ) -> Summary:
        """The summary of `answers` over `seconds` (default: first due to last answer), with
        goodput when an SLO (seconds from due) is given."""
        if seconds is None:
            seconds = max((a.due + a.latency for a in answers), default=0.0)
            seconds -= min((a.due for a in answers), default=0.0)
        seconds = max(seconds, 1e-9)
        expected = np.array([a.latency for a in answers if a.as_expected])
        ok = [a for a in answers if not a.request.bad and a.status == 200]
        counts = Counter(
            f"{'bad:' + a.request.kind if a.request.bad else 'good'} -> {a.status}" for a in answers
        )
        good = None if slo is None else sum(a.latency <= slo for a in ok) / seconds
        return cls(
            requests=len(answers),
            seconds=round(seconds, 3),
            requests_per_s=round(len(answers) / seconds, 1),
            images_per_s=round(sum(a.request.images for a in answers) / seconds, 1),
            as_expected=len(expected),
            good_not_200=sum(not a.request.bad and a.status != 200 for a in answers),
            bad_not_4xx=sum(a.request.bad and not 400 <= a.status < 500 for a in answers),
            server_errors=sum(a.status >= 500 or a.status == 0 for a in answers),
            shed_503=sum(a.status == 503 for a in answers),
            goodput_per_s=None if good is None else round(good, 1),
            p50_ms=_ms(expected, 50),
            p95_ms=_ms(expected, 95),
            p99_ms=_ms(expected, 99),
            status_counts=dict(sorted(counts.items())),
        )
