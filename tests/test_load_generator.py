"""The load generator (harness/load.py) against a small HTTP/1.1 server on loopback: every request
sent once or for a time, answers read whole (fixed length, chunked, connection closed), kept-alive
connections reused, a late answer counted as none, and what the answers amount to."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness.load import Answer, Request, Summary, closed_loop, open_loop

pytestmark = pytest.mark.unit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless told otherwise
    connections: set[tuple[str, int]]
    bodies: list[bytes]

    def do_POST(self) -> None:
        self.connections.add(self.client_address)
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n")
            return
        if self.path == "/slow":
            time.sleep(2)
        status = {"/refuse": 415, "/fail": 500}.get(self.path, 200)
        self.send_response(status)
        self.send_header("Content-Length", "2")
        if self.path == "/close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:  # quiet
        pass


class Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up on /slow: the broken pipe is expected


@pytest.fixture
def server() -> Iterator[tuple[str, type[Handler]]]:
    handler = type("H", (Handler,), {"connections": set(), "bodies": []})
    httpd = Server(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def test_each_request_once_its_answers_counted_by_what_it_is(server):
    url, handler = server
    good, refused = Request("/ok", b'{"a": 1}'), Request("/refuse", b"x", kind="junk", bad=True)
    wrong = [Request("/refuse", b"{}"), Request("/ok", b"x", kind="junk", bad=True)]
    answers = asyncio.run(closed_loop(url, [good] * 6 + [refused] * 3 + wrong, concurrency=2))
    assert len(answers) == 11 and len(handler.bodies) == 11
    assert handler.bodies.count(b'{"a": 1}') == 6
    summary = Summary.of(answers)
    assert summary.status_counts == {
        "bad:junk -> 200": 1,
        "bad:junk -> 415": 3,
        "good -> 200": 6,
        "good -> 415": 1,
    }
    assert (summary.as_expected, summary.good_not_200, summary.bad_not_4xx) == (9, 1, 1)
    assert summary.server_errors == 0 and summary.requests == 11
    assert len(handler.connections) == 2, "two clients, two kept-alive connections"


def test_chunked_answers_are_read_whole_and_the_connection_reused(server):
    url, handler = server
    answers = asyncio.run(closed_loop(url, [Request("/chunked")] * 8, concurrency=2))
    assert [a.status for a in answers] == [200] * 8
    assert len(handler.connections) == 2


def test_a_connection_the_server_closes_is_not_reused(server):
    url, handler = server
    answers = asyncio.run(closed_loop(url, [Request("/close")] * 5, concurrency=1))
    assert [a.status for a in answers] == [200] * 5
    assert len(handler.connections) == 5


def test_no_answer_within_the_timeout_counts_as_none_and_as_a_server_error(server):
    url, _ = server
    requests = [Request("/slow"), Request("/fail")]
    answers = asyncio.run(closed_loop(url, requests, concurrency=2, timeout=0.3))
    assert sorted(a.status for a in answers) == [0, 500]
    summary = Summary.of(answers)
    assert summary.server_errors == 2 and summary.as_expected == 0 and summary.p50_ms is None


def test_for_a_time_the_requests_are_sent_in_turn(server):
    url, handler = server
    requests = [Request("/ok", b"1"), Request("/ok", b"2")]
    answers = asyncio.run(closed_loop(url, requests, concurrency=1, seconds=1.0, warmup=0.1))
    assert len(answers) >= 2 and all(a.status == 200 and a.due < 1.0 for a in answers)
    sent = handler.bodies[-len(answers) :]  # after the warm-up's
    assert sent == [b"1", b"2"] * (len(sent) // 2) + [b"1"] * (len(sent) % 2)


def test_an_open_loop_sends_on_schedule_whatever_the_answers(server):
    url, _ = server
    answers = asyncio.run(open_loop(url, [Request("/ok")], rate=50, seconds=0.4, timeout=10))
    assert [a.due for a in answers] == [i / 50 for i in range(20)]
    summary = Summary.of(answers, seconds=0.4, slo=10)
    assert summary.requests_per_s == 50 and summary.goodput_per_s == 50


def test_the_summary_of_known_answers():
    request, photo = Request("/ok"), Request("/ok", images=4)
    answers = [Answer(request, 0.0, 200, 0.010), Answer(request, 0.5, 200, 0.030)]
    answers += [Answer(photo, 1.0, 200, 1.0), Answer(request, 1.0, 503, 0.001)]
    summary = Summary.of(answers, slo=0.5)
    assert summary.seconds == 2.0 and summary.requests_per_s == 2.0
    assert summary.images_per_s == 3.5  # 1 + 1 + 4 + 1 images in 2 s
    assert summary.goodput_per_s == 1.0  # two answers 200 within the SLO, in 2 s
    assert summary.shed_503 == 1 and summary.server_errors == 1 and summary.good_not_200 == 1
    assert summary.p50_ms == 30.0  # of the three answers 200, not of the fast 503
