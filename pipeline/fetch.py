"""Stage `fetch`: get the four Fashion-MNIST IDX files, verified, into data/raw/.

Mirrors are tried in order for each file: local directories first (Debian's `dataset-fashion-mnist`
package installs /usr/share/datasets/fashion-mnist), then the official HTTPS mirrors (the list is
pipeline/core/fashion_mnist.py's MIRRORS, or the environment's FASHION_MNIST_MIRRORS). Files are
verified by the SHA-256 of their *decompressed* content (same module), because mirrors recompress
the .gz archives (Debian's differ byte-wise from Zalando's) while the content is identical.
Nothing is written to the output directory unless all files verified.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.fashion_mnist import MIRRORS, SHA256
from pipeline.core.params import FetchParams, load_params
from pipeline.shared.progress import Progress, duration

_CHUNK = 1 << 16
SOURCES_FILE = "sources.json"


class FetchError(RuntimeError):
    """No mirror supplied a verified copy of some file; the message lists every attempt."""


class _Unreachable(OSError):
    """The mirror itself cannot be reached: skip it for the remaining files."""


@dataclass
class _Attempts:
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (file, mirror, why)
    dead_mirrors: dict[str, str] = field(default_factory=dict)

    def report(self) -> str:
        lines = ["could not fetch Fashion-MNIST from any mirror:"]
        lines += [f"  - {mirror} [{name}]: {why}" for name, mirror, why in self.failures]
        return "\n".join(lines)


def _is_url(mirror: str) -> bool:
    return mirror.startswith(("http://", "https://"))


def _download(url: str, timeout: float, retries: int) -> bytes:
    """GET a URL with a timeout and retries (backoff), printing progress to stderr."""
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(2**attempt, 10))
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                total = int(resp.headers.get("Content-Length") or 0)  # 0: not announced
                progress = Progress(total, f"    {url}", unit="MB", scale=1e6, stream=sys.stderr)
                chunks, got = [], 0
                while chunk := resp.read(_CHUNK):
                    chunks.append(chunk)
                    got += len(chunk)
                    progress.update(got)
                took = duration(progress.elapsed)
                progress.finish(f"    {url}: {got / 1e6:.1f} MB in {took}")
                return b"".join(chunks)
        except urllib.error.HTTPError as err:
            if err.code < 500:  # 404 and friends will not change on retry
                raise OSError(f"HTTP {err.code} {err.reason}") from None
            last = OSError(f"HTTP {err.code} {err.reason}")
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            last = _Unreachable(f"unreachable ({reason}) after {attempt + 1} attempt(s)")
    assert last is not None
    raise last


def _read_from(mirror: str, name: str, params: FetchParams) -> bytes:
    """Raw bytes of `name` (.gz or plain) from one mirror."""
    if _is_url(mirror):
        return _download(f"{mirror.rstrip('/')}/{name}.gz", params.timeout_s, params.retries)
    base = Path(mirror)
    if not base.is_dir():
        raise _Unreachable(f"not a directory ({base})")
    for candidate in (base / f"{name}.gz", base / name):
        if candidate.is_file():
            return candidate.read_bytes()
    raise OSError(f"no {name}.gz or {name} in {base}")


def decompress(data: bytes) -> bytes:
    """gunzip when the bytes are gzip; plain IDX files pass through."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise OSError(f"corrupt gzip file ({err})") from None


def verified_content(data: bytes, expected_sha256: str) -> bytes:
    """Decompressed content if its SHA-256 matches, else OSError saying what was found."""
    content = decompress(data)
    digest = hashlib.sha256(content).hexdigest()
    if digest != expected_sha256:
        kind = "gzip" if data[:2] == b"\x1f\x8b" else "not a gzip file,"
        raise OSError(
            f"checksum mismatch ({kind} content sha256 {digest[:12]}…, expected {expected_sha256[:12]}…)"
        )
    return content


def mirrors_from(environ: Mapping[str, str]) -> tuple[str, ...]:
    """FASHION_MNIST_MIRRORS (directories and URLs, space-separated) when set, else MIRRORS."""
    return tuple(environ.get("FASHION_MNIST_MIRRORS", "").split()) or MIRRORS


def fetch_dataset(
    params: FetchParams,
    out_dir: Path,
    mirrors: Sequence[str] = MIRRORS,
    files: Mapping[str, str] = SHA256,
) -> dict[str, str]:
    """Fetch and verify every file of `files` (name -> SHA-256 of the decompressed content) from
    the first of `mirrors` that has it into out_dir; returns file -> mirror used.

    out_dir also gets SOURCES_FILE: for each file, the mirror it came from and its SHA-256, the
    data's provenance that `train` and `evaluate` log with the datasets in MLflow. All files are
    staged in a temporary directory and moved into out_dir only when every one verified, so a
    failed or interrupted fetch never leaves partial or unverified outputs.
    """
    attempts = _Attempts()
    sources: dict[str, str] = {}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".fetch-") as tmp:
        staged = Path(tmp)
        for name, sha in files.items():
            for mirror in mirrors:
                if mirror in attempts.dead_mirrors:
                    continue
                try:
                    content = verified_content(_read_from(mirror, name, params), sha)
                except _Unreachable as err:
                    attempts.dead_mirrors[mirror] = str(err)
                    attempts.failures.append((name, mirror, str(err)))
                    continue
                except OSError as err:
                    attempts.failures.append((name, mirror, str(err)))
                    print(f"  rejected {name} from {mirror}: {err}", file=sys.stderr)
                    continue
                (staged / name).write_bytes(content)
                sources[name] = mirror
                print(f"  {name}: verified ({len(content):,} bytes) from {mirror}")
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, required=True, help="directory for the IDX files")
    args = parser.parse_args()
    params = load_params(args.params)
    try:
        fetch_dataset(params.fetch, args.out, mirrors_from(os.environ))
    except FetchError as err:
        sys.exit(f"fetch failed: {err}")


if __name__ == "__main__":
    main()
