"""The fetch stage against real HTTP servers on 127.0.0.1 and local mirror directories."""

from __future__ import annotations

import functools
import gzip
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from conftest import REPO, free_port
from idx_files import gz, sha256, tiny_dataset

from pipeline.core.fashion_mnist import MIRRORS
from pipeline.core.params import FetchParams
from pipeline.fetch import FetchError, fetch_dataset, mirrors_from

pytestmark = [pytest.mark.data]

FILES = tiny_dataset()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_root(tmp_path_factory) -> tuple[str, Path]:
    """A real HTTP server on a free loopback port serving mirrors as sub-directories."""
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
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


HASHES = {name: sha256(data) for name, data in FILES.items()}


PARAMS = FetchParams(timeout_s=2, retries=0)


def test_corrupt_mirror_rejected_good_mirror_taken(http_root, tmp_path, capsys):
    url, _ = http_root
    out = tmp_path / "raw"
    sources = fetch_dataset(PARAMS, out, [f"{url}/corrupt", f"{url}/good"], HASHES)
    assert set(sources.values()) == {f"{url}/good"}
    for name, data in FILES.items():
        assert (out / name).read_bytes() == data, "decompressed, verified content is written"
    assert "checksum mismatch" in capsys.readouterr().err


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
