"""Tiny synthetic IDX files for data tests (no 30 MB downloads needed)."""

from __future__ import annotations

import gzip
import hashlib
import zlib

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file (magic 0x0000080N + big-endian dims + data)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def tiny_dataset(n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict[str, bytes]:
    """The four Fashion-MNIST files, decompressed, with every class present in both splits."""
    rng = np.random.default_rng(seed)
    files = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        files[f"{prefix}-images-idx3-ubyte"] = idx_bytes(images)
        files[f"{prefix}-labels-idx1-ubyte"] = idx_bytes(labels.astype(np.uint8))
    return files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def gzip_bomb(size: int) -> bytes:
    """A small valid gzip stream (about size / 1000 bytes) that decompresses to `size` zero bytes,
    compressed piece by piece so that making it never holds `size` bytes."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    parts = [
        deflate.compress(block[: min(len(block), size - done)])
        for done in range(0, size, len(block))
    ]
    return b"".join(parts) + deflate.flush()
