"""Stage `prepare`: decode the raw IDX files, split train/validation, mix in the accepted feedback
corrections, check and report the data.

Outputs data/prepared/{train,val,test}.npz (uint8 images, int labels), data/prepared/feedback.npz
(the feedback slice: x, y, sha256 of the held-out corrections; possibly none), a data report
(JSON + CSV) with per-split class counts, pixel statistics and exact-duplicate counts, and
reports/data/feedback.json (what of the feedback went where).
The stage fails when a data check fails (missing class, wrong shape, label out of range).

The corrections (data/feedback/corrections.npz, stage `feedback`) are split by their pixels' hash:
those with int(sha256[:8], 16) % 1000 < prepare.feedback.slice_permille are the feedback slice,
held out for `evaluate`; the others join the training split (prepare.feedback.repeat times each),
never val, so val stays the original split and validation accuracies stay comparable across
dataset versions. A hash, not a random draw: an image stays on its side as the dataset grows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from pipeline.core import paths
from pipeline.core.fashion_mnist import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES
from pipeline.core.params import PrepareFeedbackParams, PrepareParams, load_params
from pipeline.shared.dataset import (
    Corrections,
    DataError,
    Split,
    content_hash,
    load_corrections,
    load_raw_split,
    save_arrays,
    save_split,
)


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a class-stratified random subset of size n (all indices if n >= len)."""
    if n >= len(labels):
        return np.arange(len(labels))
    idx, _ = train_test_split(
        np.arange(len(labels)), train_size=n, stratify=labels, random_state=seed
    )
    return np.sort(idx)


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices, each class split in proportion val_fraction."""
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, stratify=labels, random_state=seed
    )
    return np.sort(train_idx), np.sort(val_idx)


def split_dataset(train: Split, test: Split, params: PrepareParams) -> dict[str, Split]:
    """Train/val/test splits: optional stratified subsets of train and test first, then the
    stratified train/val split."""
    if params.max_train_samples is not None:
        train = train.subset(stratified_subset(train.y, params.max_train_samples, params.seed))
    if params.max_test_samples is not None:
        test = test.subset(stratified_subset(test.y, params.max_test_samples, params.seed))
    train_idx, val_idx = stratified_split(train.y, params.val_fraction, params.seed)
    return {"train": train.subset(train_idx), "val": train.subset(val_idx), "test": test}


def in_feedback_slice(sha256: np.ndarray, permille: int) -> np.ndarray:
    """Which corrections are held out: int(sha256[:8], 16) % 1000 < permille, by image."""
    return np.array([int(h[:8], 16) % 1000 < permille for h in sha256], dtype=bool)


def mix_feedback(
    train: Split, val: Split, corrections: Corrections, params: PrepareFeedbackParams
) -> tuple[Split, Corrections, dict]:
    """(train with the corrections outside the slice added, the feedback slice, a report).

    A correction identical to a validation image is not trained on (it would leak into the
    validation accuracy that chooses the champion); with `enabled` false none is.
    """
    held_out = in_feedback_slice(corrections.sha256, params.slice_permille)
    rest = corrections.subset(~held_out)
    in_val = np.isin(_image_keys(rest.x), _image_keys(val.x))
    used = rest.subset(~in_val & params.enabled)
    report = {
        "enabled": params.enabled,
        "repeat": params.repeat,
        "corrections": len(corrections),
        "slice": int(held_out.sum()),
        "train_images": len(used),
        "train_rows": len(used) * params.repeat,
        "left_out_in_val": int(in_val.sum()),
        "same_as_a_training_image": count_shared(train.x, used.x),
    }
    if len(used):
        train = Split(
            np.concatenate([train.x, *[used.x] * params.repeat]),
            np.concatenate([train.y, *[used.y] * params.repeat]),
        )
    return train, corrections.subset(held_out), report


def check_splits(splits: dict[str, Split]) -> None:
    """Raise DataError when a split has a wrong shape, a label out of range, or misses a class."""
    for name, s in splits.items():
        if s.x.ndim != 3 or s.x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or s.x.dtype != np.uint8:
            raise DataError(
                f"{name}: images are {s.x.dtype}{s.x.shape}, expected uint8 (N, 28, 28)"
            )
        if len(s.x) != len(s.y):
            raise DataError(f"{name}: {len(s.x)} images but {len(s.y)} labels")
        bad = s.y[(s.y < 0) | (s.y >= NUM_CLASSES)]
        if bad.size:
            raise DataError(f"{name}: label {int(bad[0])} out of range 0-{NUM_CLASSES - 1}")
        missing = sorted(set(range(NUM_CLASSES)) - set(np.unique(s.y).tolist()))
        if missing:
            names = ", ".join(f"{c} ({CLASS_NAMES[c]})" for c in missing)
            raise DataError(f"{name}: missing class(es) {names}")


def _image_keys(x: np.ndarray) -> np.ndarray:
    """One hashable value per image (its raw bytes), for exact-duplicate detection."""
    flat = np.ascontiguousarray(x.reshape(len(x), int(np.prod(x.shape[1:]))))
    return flat.view(np.dtype((np.void, flat.shape[1]))).ravel()


def count_duplicates(x: np.ndarray) -> int:
    """Number of images that exactly repeat an earlier image of the same array."""
    return len(x) - len(np.unique(_image_keys(x)))


def count_shared(a: np.ndarray, b: np.ndarray) -> int:
    """Number of images of b that also appear (exactly) in a."""
    return int(np.isin(_image_keys(b), _image_keys(a)).sum())


def data_report(splits: dict[str, Split]) -> tuple[dict, pd.DataFrame]:
    """Report dict (JSON) and per-split class-count table (CSV) of the prepared splits."""
    counts = pd.DataFrame(
        {name: np.bincount(s.y, minlength=NUM_CLASSES) for name, s in splits.items()},
        index=pd.Index(CLASS_NAMES, name="class"),
    )
    names = list(splits)
    report = {
        "splits": {
            name: {
                "samples": len(s),
                "pixel_mean": round(float(s.x.mean()), 4),
                "pixel_std": round(float(s.x.std()), 4),
                "duplicates_within": count_duplicates(s.x),
                "class_counts": counts[name].to_dict(),
            }
            for name, s in splits.items()
        },
        "duplicates_across": {
            f"{a}/{b}": count_shared(splits[a].x, splits[b].x)
            for i, a in enumerate(names)
            for b in names[i + 1 :]
        },
    }
    return report, counts.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=paths.PARAMS)
    parser.add_argument("--raw", type=Path, default=paths.RAW)
    parser.add_argument("--out", type=Path, default=paths.PREPARED, help="the .npz splits' folder")
    parser.add_argument(
        "--report",
        type=Path,
        default=paths.DATA_REPORT,
        help="data report JSON; CSV beside it, and feedback.json (where the feedback went)",
    )
    parser.add_argument(
        "--feedback",
        type=Path,
        default=paths.CORRECTIONS,
        help="the accepted corrections (the feedback stage's corrections.npz)",
    )
    args = parser.parse_args()
    params = load_params(args.params)
    try:
        splits = split_dataset(
            load_raw_split(args.raw, "train"), load_raw_split(args.raw, "test"), params.prepare
        )
        corrections = load_corrections(args.feedback)
        train, held_out, mixed = mix_feedback(
            splits["train"], splits["val"], corrections, params.prepare.feedback
        )
        splits["train"] = train
        check_splits(splits)
    except DataError as err:
        sys.exit(f"prepare failed: {err}")
    report, counts = data_report(splits)
    for name, s in splits.items():
        save_split(s, args.out / paths.SPLIT_FILES[name])
    save_arrays(
        args.out / paths.FEEDBACK_SLICE,
        {
            "x": held_out.x,
            "y": held_out.y,
            "sha256": held_out.sha256,
            # Which feedback dataset the slice was cut from, and how much of it went into train:
            # `evaluate` logs both with the slice as the run's feedback input in MLflow.
            # (Not in feedback.json: a digest there would be a column of `dvc exp show`.)
            "dataset_digest": np.array(content_hash(corrections.split)),
            "train_images": np.array(mixed["train_images"]),
        },
    )
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    counts.to_csv(args.report.with_suffix(".csv"), index=False)
    (args.report.parent / "feedback.json").write_text(json.dumps(mixed, indent=2) + "\n")
    print(json.dumps({n: r["samples"] for n, r in report["splits"].items()}))
    print(f"feedback: {json.dumps(mixed)}")


if __name__ == "__main__":
    main()
