"""Fashion-MNIST on disk: IDX decoding with full validation, and the prepared .npz splits."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.fashion_mnist import IMAGE_SIZE, NUM_CLASSES, RAW_FILES

SPLITS = ("train", "val", "test")
_IDX_UBYTE = 0x08


class DataError(ValueError):
    """A data file is corrupt or a data check failed; the message names the file and problem."""


@dataclass(frozen=True)
class Split:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of one split."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> Split:
        return Split(self.x[idx], self.y[idx])


def decode_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode an IDX file of unsigned bytes, checking magic number, dimensions and length."""
    if len(data) < 4:
        raise DataError(f"{name}: too short for an IDX header ({len(data)} bytes)")
    zero, dtype, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or dtype != _IDX_UBYTE or ndim not in (1, 3):
        raise DataError(
            f"{name}: bad magic number 0x{data[:4].hex()} "
            "(expected 0x00000801 for labels or 0x00000803 for images)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated header ({len(data)} of {header} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(
            f"{name}: {what}: dimensions {dims} need {expected} bytes, file has {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: Path) -> np.ndarray:
    """Read and decode one (decompressed) IDX file."""
    return decode_idx(path.read_bytes(), str(path))


def load_raw_split(raw_dir: Path, split: str) -> Split:
    """Load the images and labels of the raw train or test split and check they agree."""
    images_name, labels_name = RAW_FILES[split]
    x = read_idx(raw_dir / images_name)
    y = read_idx(raw_dir / labels_name)
    if x.ndim != 3 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{raw_dir / images_name}: images have shape {x.shape[1:]}, expected 28x28")
    if y.ndim != 1:
        raise DataError(f"{raw_dir / labels_name}: labels must be 1-D, got shape {y.shape}")
    if len(x) != len(y):
        raise DataError(
            f"{raw_dir}: {split} has {len(x)} images but {len(y)} labels ({images_name}, {labels_name})"
        )
    if y.size and y.max() >= NUM_CLASSES:
        raise DataError(f"{raw_dir / labels_name}: label {int(y.max())} out of range 0-9")
    return Split(x, y.astype(np.int64))


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Write an output file atomically: `write` fills a temporary file beside `path`, which then
    replaces it, so a failed or interrupted stage never leaves a half-written output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs should be readable like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_split(split: Split, path: Path) -> None:
    """Write a split as .npz atomically (temp file + rename)."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: savez would append .npz to a bare name
            np.savez_compressed(f, x=split.x, y=split.y)

    write_atomically(path, write)


def load_split(path: Path) -> Split:
    """Read a prepared split written by save_split."""
    with np.load(path) as f:
        return Split(f["x"], f["y"].astype(np.int64))


def content_hash(*splits: Split) -> str:
    """SHA-256 of the arrays' bytes: the data's identity for lineage, independent of file format."""
    h = hashlib.sha256()
    for s in splits:
        h.update(np.ascontiguousarray(s.x).tobytes())
        h.update(np.ascontiguousarray(s.y).tobytes())
    return h.hexdigest()
