"""Stage `fetch`: get the four Fashion-MNIST IDX files, verified, into data/raw/.

Mirrors are tried in order for each file: local directories first (Debian's `dataset-fashion-mnist`
package installs /usr/share/datasets/fashion-mnist), then the official HTTPS mirrors (the list is
pipeline/core/fashion_mnist.py's MIRRORS, or the environment's FASHION_MNIST_MIRRORS). Files are
verified by the SHA-256 of their *decompressed* content (same module), because mirrors recompress
the .gz archives (Debian's differ byte-wise from Zalando's) while the content is identical.
Nothing is written to the output directory unless all files verified.

A broken or hostile mirror costs one rejected file, never memory or a wrong file: every body is
streamed to disk with a bound. Each file's decompressed size is known exactly (SIZES), so its
content may not grow past it (a gzip bomb stops there) and the bytes received may not pass
max_download_bytes. A body shorter than its Content-Length, or a connection reset in the middle,
is a truncated download (retried, then the next mirror). Credentials in a mirror URL
(`https://user:token@host/...`, query values) are used, the user part as HTTP Basic auth, but
never shown: messages, errors and sources.json get the mirror as `https://***@host/...?key=***`.
The module is past 300 lines because the bounded decoder and the redaction belong to this stage
alone and read best next to the loop that uses them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import logging
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pipeline.core import paths
from pipeline.core.fashion_mnist import IMAGE_SIZE, MIRRORS, SHA256
from pipeline.core.params import FetchParams, load_params
from pipeline.shared.logs import configure_logging
from pipeline.shared.progress import Progress, duration

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"
SOURCES_FILE = paths.SOURCES_FILE  # beside the IDX files: where each came from
HIDDEN = "***"  # what a mirror's credentials are shown as
# Each file's decompressed size in bytes: the IDX header (16 bytes for images, 8 for labels), then
# one byte per pixel or label. A dataset fact, but kept here rather than in fashion_mnist.py:
# every stage depends on that module, so editing it would rerun the whole pipeline.
SIZES = {
    "train-images-idx3-ubyte": 16 + 60_000 * IMAGE_SIZE * IMAGE_SIZE,
    "train-labels-idx1-ubyte": 8 + 60_000,
    "t10k-images-idx3-ubyte": 16 + 10_000 * IMAGE_SIZE * IMAGE_SIZE,
    "t10k-labels-idx1-ubyte": 8 + 10_000,
}


def max_download_bytes(size: int) -> int:
    """The most bytes a mirror may send for a file of `size` decompressed bytes.

    gzip grows incompressible data by well under 1% (zlib's deflateBound: about 0.03%), and
    64 KiB leave room for any header (file name, comment); a plain IDX file is `size` itself.
    """
    return size + size // 100 + 64 * 1024


class FetchError(RuntimeError):
    """No mirror supplied a verified copy of some file; the message lists every attempt."""


class _Unreachable(OSError):
    """The mirror itself cannot be reached: skip it for the remaining files."""


class _Truncated(OSError):
    """The body stopped before its end (connection closed or reset): worth a retry."""


@dataclass(frozen=True)
class Mirror:
    """One mirror: `spec` as configured (it may hold credentials: never shown), `shown` with
    them as ***. For a URL, `url` is it without its user:password@, which `authorization` (an
    HTTP Basic header value) carries instead; `secrets` are the strings `hide` masks."""

    spec: str = field(repr=False)
    shown: str
    url: str | None = None  # None: a local directory
    authorization: str | None = field(default=None, repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def hide(self, text: str) -> str:
        """`text` with any of this mirror's secrets masked (an error may echo a URL)."""
        for secret in self.secrets:
            text = text.replace(secret, HIDDEN)
        return text


def _is_url(mirror: str) -> bool:
    return mirror.startswith(("http://", "https://"))


def redact(spec: str) -> str:
    """A mirror as it may be shown: user:password@ and query values as ***."""
    try:
        return parse_mirror(spec).shown
    except ValueError:  # not even parseable: mask by pattern
        return re.sub(r"\?.*", f"?{HIDDEN}", re.sub(r"//[^/?#]*@", f"//{HIDDEN}@", spec))


def parse_mirror(spec: str) -> Mirror:
    """A Mirror from a directory or a URL (ValueError: a URL that cannot be parsed)."""
    if not _is_url(spec):
        return Mirror(spec, spec)
    parts = urllib.parse.urlsplit(spec)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    secrets: set[str] = set()
    authorization = None
    if at:
        user, _, password = userinfo.partition(":")
        plain = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
        token = base64.b64encode(plain.encode()).decode("ascii")
        authorization = f"Basic {token}"
        secrets |= {userinfo, user, password, token}
    items = parts.query.split("&") if parts.query else []
    shown_items = []
    for item in items:
        key, eq, value = item.partition("=")
        secrets |= {value, item} if eq else {item}
        shown_items.append(f"{key}={HIDDEN}" if eq else HIDDEN)
    secrets |= {urllib.parse.unquote_plus(s) for s in secrets}
    # Short strings would mask half of every message; the URL's own parts are masked regardless.
    kept = sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True)
    url = urllib.parse.urlunsplit((parts.scheme, hostport, parts.path, parts.query, ""))
    shown = spec
    if at or items or parts.fragment:
        netloc = f"{HIDDEN}@{hostport}" if at else hostport
        query = "&".join(shown_items)
        shown = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    return Mirror(spec, shown, url, authorization, tuple(kept))


def _file_url(base: str, name: str) -> str:
    """`name`.gz under a mirror URL; its query string, if any, stays at the end."""
    parts = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{name}.gz"))


@dataclass
class _Attempts:
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (file, mirror, why)
    dead_mirrors: dict[str, str] = field(default_factory=dict)

    def report(self) -> str:
        lines = ["could not fetch Fashion-MNIST from any mirror:"]
        lines += [f"  - {mirror} [{name}]: {why}" for name, mirror, why in self.failures]
        return "\n".join(lines)


class _Content:
    """One file's content as its bytes arrive: gunzipped when gzip (several members allowed),
    hashed and written to `dest`; refused as soon as the bytes received pass
    max_download_bytes(size) or the content passes `size`, so neither is ever held or inflated."""

    def __init__(self, dest: BinaryIO, size: int) -> None:
        self.size, self.limit = size, max_download_bytes(size)
        self.received = self.length = 0  # bytes in, content bytes out
        self._dest = dest
        self._sha = hashlib.sha256()
        self._gzip: bool | None = None  # None: fewer than two bytes seen yet
        self._inflate: zlib._Decompress | None = None  # the gzip member being decompressed
        self._pending = b""  # input not yet decompressed

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.limit:
            raise OSError(
                f"oversized: more than {self.limit:,} bytes received for a file of "
                f"{self.size:,} bytes"
            )
        if self._gzip is False:
            self._emit(data)
            return
        self._pending += data
        while self._pending:
            if self._inflate is None:  # at the start, or between gzip members
                if self._gzip:
                    self._pending = self._pending.lstrip(b"\0")  # gzip allows zero padding
                if len(self._pending) < 2:
                    return
                if self._pending[:2] != _GZIP_MAGIC:
                    if self._gzip is None:  # a plain IDX file: it passes through
                        self._gzip = False
                        self._emit(self._pending)
                        self._pending = b""
                        return
                    raise OSError("corrupt gzip file (data after the compressed stream)")
                self._gzip = True
                self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            data, self._pending = self._pending, b""
            try:
                # At most one byte past the size: enough to refuse, never more.
                out = self._inflate.decompress(data, self.size - self.length + 1)
            except zlib.error as err:
                raise OSError(f"corrupt gzip file ({err})") from None
            self._emit(out)
            if self._inflate.eof:
                self._pending, self._inflate = self._inflate.unused_data, None
            else:
                self._pending = self._inflate.unconsumed_tail

    def _emit(self, content: bytes) -> None:
        self.length += len(content)
        if self.length > self.size:
            raise OSError(f"oversized: decompresses past the {self.size:,} bytes this file has")
        self._sha.update(content)
        self._dest.write(content)

    def finish(self, expected_sha256: str) -> None:
        """Check that the stream ended whole and the content has its SHA-256 (else OSError)."""
        if self._gzip is None:  # under two bytes: not gzip
            self._gzip = False
            self._emit(self._pending)
        elif self._inflate is not None or self._pending:
            raise OSError("corrupt gzip file (the compressed stream ends early)")
        digest = self._sha.hexdigest()
        if digest != expected_sha256:
            kind = "gzip" if self._gzip else "not a gzip file,"
            raise OSError(
                f"checksum mismatch ({kind} content {self.length:,} bytes, sha256 {digest[:12]}…, "
                f"expected {self.size:,} bytes, sha256 {expected_sha256[:12]}…)"
            )


def _receive(resp: http.client.HTTPResponse, content: _Content, label: str) -> None:
    """Stream a response body into `content`, checking it against its Content-Length."""
    total = resp.length  # what http.client will read: None when not announced (or chunked)
    if total is not None and total > content.limit:
        raise OSError(
            f"oversized: Content-Length {total:,}, more than the {content.limit:,} bytes a file "
            f"of {content.size:,} bytes may take"
        )
    progress = Progress(total or 0, label, unit="MB", scale=1e6, stream=sys.stderr)
    while True:
        try:
            chunk = resp.read1(_CHUNK)  # what has arrived: counts stay exact on a reset
        except (OSError, http.client.HTTPException) as err:  # reset, timeout, IncompleteRead
            of = f" of {total:,}" if total is not None else ""
            why = str(err) or type(err).__name__
            raise _Truncated(
                f"truncated download: {why} after {content.received:,}{of} bytes"
            ) from None
        if not chunk:
            break
        content.feed(chunk)
        progress.update(content.received)
    if total is not None and content.received < total:
        raise _Truncated(
            f"truncated download: the connection closed after {content.received:,} of the "
            f"{total:,} bytes its Content-Length announced"
        )
    took = duration(progress.elapsed)
    progress.finish(f"{label}: {content.received / 1e6:.1f} MB in {took}")


def _download(
    mirror: Mirror, name: str, dest: BinaryIO, size: int, sha: str, params: FetchParams
) -> None:
    """GET `name`.gz from a mirror URL with a timeout and retries (backoff) into `dest`, verified;
    progress to stderr."""
    assert mirror.url is not None
    request = urllib.request.Request(_file_url(mirror.url, name))
    if mirror.authorization:  # unredirected: never sent on to wherever a redirect points
        request.add_unredirected_header("Authorization", mirror.authorization)
    label = f"    {mirror.shown}: {name}.gz"
    last: OSError | None = None
    for attempt in range(params.retries + 1):
        if attempt:
            time.sleep(min(2**attempt, 10))
        dest.seek(0)
        dest.truncate()
        content = _Content(dest, size)
        try:
            resp = urllib.request.urlopen(request, timeout=params.timeout_s)
        except urllib.error.HTTPError as err:
            err.close()
            last = OSError(f"HTTP {err.code} {err.reason}")
            if err.code < 500:  # 404 and friends will not change on retry
                raise last from None
            continue
        except (OSError, http.client.HTTPException) as err:  # refused, DNS, timeout, no answer
            reason = getattr(err, "reason", None) or err
            last = _Unreachable(f"unreachable ({reason}) after {attempt + 1} attempt(s)")
            continue
        except ValueError as err:  # http.client.InvalidURL and the like
            raise OSError(f"bad URL ({err})") from None
        with resp:
            try:
                _receive(resp, content, label)
            except _Truncated as err:
                last = err
                continue
        content.finish(sha)
        return
    assert last is not None
    raise last


def _copy_local(base: Path, name: str, dest: BinaryIO, size: int, sha: str) -> None:
    """`name`.gz or `name` from a local mirror directory into `dest`, verified."""
    if not base.is_dir():
        raise _Unreachable(f"not a directory ({base})")
    for candidate in (base / f"{name}.gz", base / name):
        if candidate.is_file():
            content = _Content(dest, size)
            with candidate.open("rb") as src:
                while chunk := src.read(_CHUNK):
                    content.feed(chunk)
            content.finish(sha)
            return
    raise OSError(f"no {name}.gz or {name} in {base}")


def mirrors_from(environ: Mapping[str, str]) -> tuple[str, ...]:
    """FASHION_MNIST_MIRRORS (directories and URLs, space-separated) when set, else MIRRORS."""
    return tuple(environ.get("FASHION_MNIST_MIRRORS", "").split()) or MIRRORS


def _parsed(specs: Sequence[str]) -> list[Mirror]:
    mirrors = []
    for spec in specs:
        try:
            mirrors.append(parse_mirror(spec))
        except ValueError as err:
            raise FetchError(f"bad mirror URL {redact(spec)}: {err}") from None
    return mirrors


def fetch_dataset(
    params: FetchParams,
    out_dir: Path,
    mirrors: Sequence[str] = MIRRORS,
    files: Mapping[str, str] = SHA256,
    sizes: Mapping[str, int] = SIZES,
) -> dict[str, str]:
    """Fetch and verify every file of `files` (name -> SHA-256 of the decompressed content, whose
    size in bytes `sizes` gives) from the first of `mirrors` that has it into out_dir; returns
    file -> mirror used, credentials hidden (Mirror.shown).

    out_dir also gets SOURCES_FILE: for each file, the mirror it came from (as shown) and its
    SHA-256, the data's provenance that `train` and `evaluate` log with the datasets in MLflow.
    All files are staged in a temporary directory and moved into out_dir only when every one
    verified, so a failed or interrupted fetch never leaves partial or unverified outputs.
    """
    attempts = _Attempts()
    sources: dict[str, str] = {}
    parsed = _parsed(mirrors)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".fetch-") as tmp:
        staged = Path(tmp)
        for name, sha in files.items():
            for mirror in parsed:
                if mirror.spec in attempts.dead_mirrors:
                    continue
                try:
                    with (staged / name).open("wb") as dest:
                        if mirror.url is None:
                            _copy_local(Path(mirror.spec), name, dest, sizes[name], sha)
                        else:
                            _download(mirror, name, dest, sizes[name], sha, params)
                except OSError as err:
                    why = mirror.hide(str(err))
                    attempts.failures.append((name, mirror.shown, why))
                    if isinstance(err, _Unreachable):
                        attempts.dead_mirrors[mirror.spec] = why
                        log.warning("  skipping %s from now on: %s", mirror.shown, why)
                    else:
                        log.warning("  rejected %s from %s: %s", name, mirror.shown, why)
                    continue
                sources[name] = mirror.shown
                size = (staged / name).stat().st_size
                print(f"  {name}: verified ({size:,} bytes) from {mirror.shown}")
                break
        missing = [n for n in files if n not in sources]
        if missing:
            raise FetchError(attempts.report() + f"\nmissing: {', '.join(missing)}")
        provenance = {n: {"mirror": sources[n], "sha256": files[n]} for n in files}
        (staged / SOURCES_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        # Everything verified: publish atomically file by file (same filesystem => rename).
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in [*files, SOURCES_FILE]:
            os.replace(staged / name, out_dir / name)
    return sources


def main() -> None:
    configure_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=paths.PARAMS)
    parser.add_argument("--out", type=Path, default=paths.RAW, help="directory for the IDX files")
    args = parser.parse_args()
    params = load_params(args.params)
    try:
        fetch_dataset(params.fetch, args.out, mirrors_from(os.environ))
    except FetchError as err:
        sys.exit(f"fetch failed: {err}")


if __name__ == "__main__":
    main()
