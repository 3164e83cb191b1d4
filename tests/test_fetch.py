"""The fetch stage against real HTTP servers on 127.0.0.1 and local mirror directories.

Past 300 lines: one local HTTP server, shared by every way a download can fail.
"""

from __future__ import annotations

import base64
import functools
import gzip
import http.server
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import traceback
import tracemalloc
from pathlib import Path

import pytest
import yaml
from conftest import REPO, free_port
from idx_files import gz, gzip_bomb, sha256, tiny_dataset

from pipeline.core.fashion_mnist import MIRRORS
from pipeline.core.params import FetchParams
from pipeline.fetch import (
    SOURCES_FILE,
    FetchError,
    fetch_dataset,
    max_download_bytes,
    mirrors_from,
    redact,
)

pytestmark = [pytest.mark.data]

FILES = tiny_dataset()
GZ = {name: gz(data) for name, data in FILES.items()}
SIZES = {name: len(data) for name, data in FILES.items()}
BOMB_SIZE = 32 << 20  # decompressed; far past any tiny file, its gzip (~32 KB) under every bound
USER, TOKEN, QUERY_TOKEN = "reader", "tok-9f8e7d6c5b4a", "qtok-0a1b2c3d4e5f"
BASIC = "Basic " + base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()
SECRETS = (TOKEN, QUERY_TOKEN, BASIC.split()[1])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Mirror directories from disk, and bad mirrors made on the fly: /<kind>/<file>.gz."""

    bomb = b""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        kind, _, file = path.strip("/").partition("/")
        serve = getattr(self, f"_serve_{kind}", None)
        if serve is None:
            super().do_GET()
            return
        body = GZ.get(file.removesuffix(".gz"))
        if body is None:
            self.send_error(404)
            return
        serve(body, query)

    def _head(self, length: int | None, chunked: bool = False) -> None:
        self.send_response(200)
        if length is not None:
            self.send_header("Content-Length", str(length))
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _serve_private(self, body: bytes, query: str) -> None:
        # Served only with the credentials: proves fetch sent them (Basic auth, query as given).
        if self.headers.get("Authorization") != BASIC or query != f"token={QUERY_TOKEN}":
            self.send_error(401)
            return
        self._head(len(body))
        self.wfile.write(body)

    def _serve_truncated(self, body: bytes, query: str) -> None:
        self._head(len(body) + 1000)  # announces more than it sends, then closes
        self.wfile.write(body[: len(body) // 2])

    def _serve_chunked(self, body: bytes, query: str) -> None:
        self._head(None, chunked=True)  # one chunk cut short: IncompleteRead
        half = body[: len(body) // 2]
        self.wfile.write(f"{len(body):x}\r\n".encode() + half)

    def _serve_reset(self, body: bytes, query: str) -> None:
        self._head(len(body))
        self.wfile.write(body[: len(body) // 2])
        # SO_LINGER 0: close() sends a TCP RST, the client's next read fails mid-body.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _serve_announced(self, body: bytes, query: str) -> None:
        self._head(10**9)  # refused on its Content-Length alone, before any body is read

    def _serve_endless(self, body: bytes, query: str) -> None:
        # No Content-Length; a gzip header whose file name never ends: no content, ever more bytes.
        self._head(None)
        try:
            self.wfile.write(b"\x1f\x8b\x08\x08" + bytes(6))
            for _ in range(256):  # 16 MiB at most, should the client not hang up
                self.wfile.write(b"a" * (1 << 16))
        except OSError:  # the client hung up: what a bounded client does
            pass

    def _serve_bomb(self, body: bytes, query: str) -> None:
        self._head(len(self.bomb))
        self.wfile.write(self.bomb)


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up on bad mirrors are the point of these tests


@pytest.fixture(scope="module")
def http_root(tmp_path_factory) -> tuple[str, Path]:
    """A real HTTP server on a free loopback port serving mirrors as sub-directories, and the
    bad mirrors of _QuietHandler (truncated, reset, oversized, gzip bomb; private)."""
    root = tmp_path_factory.mktemp("www")
    corrupt, good, notgz = root / "corrupt", root / "good", root / "notgz"
    for d in (corrupt, good, notgz):
        d.mkdir()
    for name, data in FILES.items():
        tampered = bytearray(data)
        tampered[-1] ^= 0xFF  # valid gzip, wrong content
        (corrupt / f"{name}.gz").write_bytes(gz(bytes(tampered)))
        (good / f"{name}.gz").write_bytes(gz(data))
        (notgz / f"{name}.gz").write_bytes(b"<html>not found</html>")
    _QuietHandler.bomb = gzip_bomb(BOMB_SIZE)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


HASHES = {name: sha256(data) for name, data in FILES.items()}


PARAMS = FetchParams(timeout_s=2, retries=0)


def test_corrupt_mirror_rejected_good_mirror_taken(http_root, tmp_path, caplog):
    url, _ = http_root
    out = tmp_path / "raw"
    sources = fetch_dataset(PARAMS, out, [f"{url}/corrupt", f"{url}/good"], HASHES)
    assert set(sources.values()) == {f"{url}/good"}
    for name, data in FILES.items():
        assert (out / name).read_bytes() == data, "decompressed, verified content is written"
    assert "checksum mismatch" in caplog.text


def test_local_directory_with_different_gzip_bytes(tmp_path):
    # Debian recompressed the archives: same content, different .gz bytes. Content hashes accept both.
    mirror = tmp_path / "debian"
    mirror.mkdir()
    for name, data in FILES.items():
        (mirror / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1, mtime=123))
    sources = fetch_dataset(PARAMS, tmp_path / "raw", [str(mirror)], HASHES)
    assert set(sources.values()) == {str(mirror)}


def test_only_bad_mirrors_fail_with_every_reason_and_no_files(http_root, tmp_path):
    url, _ = http_root
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    mirrors = (f"{url}/corrupt", f"{url}/notgz", f"{url}/missing", dead, str(tmp_path / "nowhere"))
    out = tmp_path / "data" / "raw"
    with pytest.raises(FetchError) as err:
        fetch_dataset(PARAMS, out, mirrors, HASHES)
    message = str(err.value)
    assert "checksum mismatch" in message
    assert "not a gzip file" in message
    assert "HTTP 404" in message
    assert f"{dead} [train-images-idx3-ubyte]: unreachable" in message
    assert "not a directory" in message
    for mirror in mirrors:
        assert mirror in message
    assert not out.exists(), "nothing is written when a file could not be verified"
    assert list((tmp_path / "data").iterdir()) == [], "no staging leftovers"


def test_stage_exits_nonzero_with_clear_message(http_root, tmp_path):
    url, _ = http_root
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["fetch"] = PARAMS.model_dump()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "data" / "raw"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.fetch", "--params", "params.yaml", "--out", str(out)],
        cwd=tmp_path,
        env={**os.environ, "FASHION_MNIST_MIRRORS": f"{url}/corrupt"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "fetch failed: could not fetch Fashion-MNIST from any mirror" in proc.stderr
    assert f"{url}/corrupt [t10k-labels-idx1-ubyte]: checksum mismatch" in proc.stderr
    assert not out.exists()


def test_mirrors_come_from_the_environment_when_set():
    assert mirrors_from({}) == MIRRORS
    assert mirrors_from({"FASHION_MNIST_MIRRORS": " "}) == MIRRORS
    local, url = "/srv/fashion-mnist", "https://mirror.example/fashion"
    assert mirrors_from({"FASHION_MNIST_MIRRORS": f"{local}  {url}\n"}) == (local, url)


def _fetch_past(bad: list[str], url: str, out: Path) -> dict[str, str]:
    """fetch_dataset over the bad mirrors, then the good one: the good one supplies every file."""
    sources = fetch_dataset(PARAMS, out, [*bad, f"{url}/good"], HASHES, SIZES)
    assert sources == {name: f"{url}/good" for name in FILES}
    for name, data in FILES.items():
        assert (out / name).read_bytes() == data
    return sources


def test_truncated_and_reset_downloads_move_on_to_the_next_mirror(http_root, tmp_path, caplog):
    url, _ = http_root
    bad = [f"{url}/truncated", f"{url}/chunked", f"{url}/reset"]
    _fetch_past(bad, url, tmp_path / "raw")
    err = caplog.text
    for name, body in GZ.items():
        total = len(body) + 1000
        assert (
            f"rejected {name} from {url}/truncated: truncated download: the connection closed "
            f"after {len(body) // 2:,} of the {total:,} bytes its Content-Length announced"
        ) in err
        assert f"rejected {name} from {url}/chunked: truncated download: IncompleteRead" in err
        assert f"rejected {name} from {url}/reset: truncated download: " in err
    assert "Connection reset by peer" in err, err
    assert "skipping" not in err, "a mirror that answered is not dropped for the other files"


def test_oversized_downloads_and_gzip_bombs_are_cut_off(http_root, tmp_path, caplog):
    url, _ = http_root
    bad = [f"{url}/announced", f"{url}/endless", f"{url}/bomb"]
    tracemalloc.start()
    try:
        _fetch_past(bad, url, tmp_path / "raw")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Inflating the bomb or holding the endless body would take BOMB_SIZE or 16 MiB.
    assert peak < 8 << 20, f"fetch held {peak:,} bytes at once"
    err = caplog.text
    for name, size in SIZES.items():
        limit = max_download_bytes(size)
        assert (
            f"rejected {name} from {url}/announced: oversized: Content-Length 1,000,000,000" in err
        )
        assert (
            f"rejected {name} from {url}/endless: oversized: more than {limit:,} bytes received"
        ) in err
        assert (
            f"rejected {name} from {url}/bomb: oversized: decompresses past the {size:,} bytes"
        ) in err


def _assert_hidden(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} shown in:\n{text}"


def test_credentials_in_mirror_urls_are_used_but_never_shown(http_root, tmp_path, capsys, caplog):
    url, _ = http_root
    host = url.removeprefix("http://")
    creds = f"http://{USER}:{TOKEN}@{host}"
    out = tmp_path / "raw"
    sources = fetch_dataset(
        PARAMS,
        out,
        [f"{creds}/corrupt?token={QUERY_TOKEN}", f"{creds}/private?token={QUERY_TOKEN}"],
        HASHES,
        SIZES,
    )
    shown = f"http://***@{host}/private?token=***"
    assert set(sources.values()) == {shown}, "the private mirror answers only with credentials"
    recorded = (out / SOURCES_FILE).read_text()
    assert {entry["mirror"] for entry in json.loads(recorded).values()} == {shown}
    captured = capsys.readouterr()
    assert f"from http://***@{host}/corrupt?token=***: checksum mismatch" in caplog.text
    _assert_hidden(recorded, captured.out, captured.err, caplog.text)

    # A failing run: the error, its traceback and the output show the mirrors, not the secrets.
    dead = f"http://{USER}:{TOKEN}@127.0.0.1:{free_port()}/x?token={QUERY_TOKEN}"
    wrong = f"http://{USER}:wrong-{TOKEN}@{host}/private?token={QUERY_TOKEN}"
    with pytest.raises(FetchError) as failed:
        fetch_dataset(PARAMS, tmp_path / "none", [dead, wrong, f"{creds}/reset"], HASHES, SIZES)
    message = "".join(traceback.format_exception(failed.value))
    assert f"http://***@{host}/private?token=*** [train-images-idx3-ubyte]: HTTP 401" in message
    assert f"http://***@{host}/reset [t10k-labels-idx1-ubyte]: truncated download" in message
    captured = capsys.readouterr()
    _assert_hidden(message, repr(failed.value), captured.out, captured.err, caplog.text)


def test_stage_hides_credentials_in_its_output(http_root, tmp_path):
    url, _ = http_root
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["fetch"] = PARAMS.model_dump()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    mirrors = f"http://{USER}:{TOKEN}@{url.removeprefix('http://')}/truncated?token={QUERY_TOKEN}"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.fetch", "--params", "params.yaml", "--out", "raw"],
        cwd=tmp_path,
        env={**os.environ, "FASHION_MNIST_MIRRORS": mirrors},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "fetch failed: could not fetch Fashion-MNIST from any mirror" in proc.stderr
    assert "/truncated?token=*** [t10k-labels-idx1-ubyte]: truncated download" in proc.stderr
    _assert_hidden(proc.stdout, proc.stderr)


def test_redacted_mirrors():
    assert redact("/usr/share/datasets/fashion-mnist") == "/usr/share/datasets/fashion-mnist"
    assert redact("https://mirror.example/fashion/") == "https://mirror.example/fashion/"
    assert redact("https://u:p%40ss@mirror.example:8443/f") == "https://***@mirror.example:8443/f"
    assert redact("https://tok@h/f?token=abc&dl") == "https://***@h/f?token=***&***"
    assert redact("https://u:tok@[::1/f?token=abc") == "https://***@[::1/f?***"
