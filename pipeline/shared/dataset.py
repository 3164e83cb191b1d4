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


@dataclass(frozen=True)
class Corrections:
    """Curated feedback corrections (data/feedback/corrections.npz, the `feedback` stage): images
    (N, 28, 28) uint8, labels (N,) int64, and per image the SHA-256 of its pixels, its source ('' when
    none was sent) and its time (ISO 8601, UTC), oldest first."""

    x: np.ndarray
    y: np.ndarray
    sha256: np.ndarray
    source: np.ndarray
    time: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> Corrections:
        return Corrections(*(a[idx] for a in self.arrays().values()))

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "x": self.x,
            "y": self.y,
            "sha256": self.sha256,
            "source": self.source,
            "time": self.time,
        }

    @property
    def split(self) -> Split:
        return Split(self.x, self.y)


def corrections_from(
    x: list[np.ndarray], y: list[int], sha256: list[str], source: list[str], time: list[str]
) -> Corrections:
    """A Corrections from per-image lists (empty lists: an empty, well-typed set)."""
    shape = (len(x), IMAGE_SIZE, IMAGE_SIZE)
    return Corrections(
        np.array(x, dtype=np.uint8).reshape(shape),
        np.array(y, dtype=np.int64),
        np.array(sha256, dtype="<U64"),
        np.array(source, dtype=str) if source else np.array([], dtype="<U1"),
        np.array(time, dtype=str) if time else np.array([], dtype="<U1"),
    )


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write named arrays as .npz, atomically; strings as fixed-width unicode, so that loading
    needs no pickle. The same arrays give the same bytes (numpy stamps no time into the zip)."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez_compressed(f, **arrays)

    write_atomically(path, write)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz written by save_arrays (no pickles allowed)."""
    with np.load(path, allow_pickle=False) as f:
        return {name: f[name] for name in f.files}


def save_corrections(corrections: Corrections, path: Path) -> None:
    save_arrays(path, corrections.arrays())


def load_corrections(path: Path) -> Corrections:
    """Read data/feedback/corrections.npz; DataError naming the file when it is not one."""
    try:
        arrays = load_arrays(path)
        c = Corrections(*(arrays[k] for k in ("x", "y", "sha256", "source", "time")))
    except (OSError, KeyError, ValueError) as err:
        raise DataError(f"{path}: not a corrections file ({err})") from None
    if c.x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or c.x.dtype != np.uint8:
        raise DataError(f"{path}: images are {c.x.dtype}{c.x.shape}, expected uint8 (N, 28, 28)")
    if not len(c.x) == len(c.y) == len(c.sha256) == len(c.source) == len(c.time):
        raise DataError(f"{path}: its arrays differ in length")
    return Corrections(c.x, c.y.astype(np.int64), c.sha256, c.source, c.time)
