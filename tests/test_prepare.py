"""Splitting, subsetting, data checks and the data report of the prepare stage."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.feedback_log import pixels_sha256
from pipeline.core.params import PrepareFeedbackParams, PrepareParams
from pipeline.prepare import (
    check_splits,
    count_duplicates,
    count_shared,
    data_report,
    in_feedback_slice,
    mix_feedback,
    split_dataset,
    stratified_split,
    stratified_subset,
)
from pipeline.shared.dataset import Corrections, DataError, Split, corrections_from

FEEDBACK = PrepareFeedbackParams(enabled=True, repeat=1, slice_permille=200)

pytestmark = pytest.mark.unit


def make_split(n: int, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10)


def test_stratified_split_keeps_class_proportions_and_is_seeded():
    labels = np.repeat(np.arange(10), 100)
    train, val = stratified_split(labels, 0.1, seed=7)
    assert len(val) == 100 and len(train) == 900
    assert not set(train) & set(val)
    assert np.array_equal(np.bincount(labels[val]), np.full(10, 10))
    assert np.array_equal(stratified_split(labels, 0.1, seed=7)[1], val)
    assert not np.array_equal(stratified_split(labels, 0.1, seed=8)[1], val)


def test_stratified_subset():
    labels = np.repeat(np.arange(10), 50)
    idx = stratified_subset(labels, 100, seed=0)
    assert len(idx) == 100 and len(set(idx)) == 100
    assert np.array_equal(np.bincount(labels[idx]), np.full(10, 10))
    assert len(stratified_subset(labels, 10_000, seed=0)) == 500


def test_split_dataset_with_subset():
    splits = split_dataset(
        make_split(1000),
        make_split(50, 1),
        PrepareParams(
            val_fraction=0.2,
            max_train_samples=500,
            max_test_samples=None,
            seed=0,
            feedback=FEEDBACK,
        ),
    )
    assert {k: len(v) for k, v in splits.items()} == {"train": 400, "val": 100, "test": 50}
    check_splits(splits)
    # A test subset too (quick runs): stratified, every class kept.
    test = make_split(200, 1)
    params = PrepareParams(
        val_fraction=0.2, max_train_samples=None, max_test_samples=30, seed=0, feedback=FEEDBACK
    )
    subset = split_dataset(make_split(100), test, params)["test"]
    assert len(subset) == 30 and np.array_equal(np.bincount(subset.y), np.full(10, 3))
    check_splits({"test": subset})


def test_checks_fail_on_missing_class_bad_shape_and_label():
    good = make_split(30)
    no_bag = Split(good.x[good.y != 8], good.y[good.y != 8])
    with pytest.raises(DataError, match=r"val: missing class\(es\) 8 \(Bag\)"):
        check_splits({"train": good, "val": no_bag})
    with pytest.raises(DataError, match=r"train: images are uint8\(30, 28, 27\)"):
        check_splits({"train": Split(good.x[:, :, :27], good.y)})
    with pytest.raises(DataError, match="test: label 12 out of range"):
        check_splits({"test": Split(good.x, np.where(good.y == 3, 12, good.y))})


def test_duplicates_within_and_across():
    a = make_split(20)
    x = np.concatenate([a.x, a.x[:3], a.x[:1]])  # 4 repeats of earlier images
    assert count_duplicates(x) == 4
    assert count_duplicates(a.x) == 0
    b = make_split(10, seed=5)
    mixed = np.concatenate([b.x, a.x[5:7]])
    assert count_shared(a.x, mixed) == 2
    assert count_shared(a.x, b.x) == 0


def test_data_report():
    train, test = make_split(40), make_split(20, 1)
    test = Split(np.concatenate([test.x, train.x[:2]]), np.concatenate([test.y, train.y[:2]]))
    report, counts = data_report({"train": train, "test": test})
    assert report["duplicates_across"] == {"train/test": 2}
    assert report["splits"]["train"]["samples"] == 40
    assert report["splits"]["train"]["class_counts"]["T-shirt/top"] == 4
    assert report["splits"]["test"]["pixel_mean"] == pytest.approx(test.x.mean(), abs=1e-3)
    assert list(counts.columns) == ["class", "train", "test"]
    assert counts["test"].sum() == 22


def corrections(split: Split) -> Corrections:
    hashes = [pixels_sha256(im) for im in split.x]
    n = len(split)
    return corrections_from(list(split.x), split.y.tolist(), hashes, ["page"] * n, ["t"] * n)


def test_the_feedback_slice_is_chosen_by_hash_and_an_image_keeps_its_side():
    hashes = np.array([pixels_sha256(im) for im in make_split(400, 3).x])
    held = in_feedback_slice(hashes, 200)
    assert np.array_equal(held, [int(h[:8], 16) % 1000 < 200 for h in hashes])
    assert 40 < held.sum() < 120  # about a fifth
    # A bigger dataset (more corrections, another order) puts every earlier image on the same side.
    grown = np.concatenate([hashes[::-1], [pixels_sha256(im) for im in make_split(100, 4).x]])
    assert np.array_equal(in_feedback_slice(grown, 200)[:400][::-1], held)
    assert not in_feedback_slice(hashes, 0).any() and in_feedback_slice(hashes, 1000).all()
    assert in_feedback_slice(np.array([], dtype="<U64"), 200).shape == (0,)


def test_mix_feedback_trains_on_the_rest_never_on_the_slice_or_a_validation_image():
    train, val = make_split(100), make_split(30, 1)
    sent = make_split(50, 2)
    # Two corrections are validation images: never trained on (they would inflate val accuracy).
    sent = Split(np.concatenate([sent.x, val.x[:2]]), np.concatenate([sent.y, val.y[:2]]))
    fb = corrections(sent)
    held = in_feedback_slice(fb.sha256, 200)
    mixed, slice_, report = mix_feedback(train, val, fb, FEEDBACK.model_copy(update={"repeat": 3}))
    in_val = np.isin(fb.sha256, [pixels_sha256(im) for im in val.x])
    expected = (~held & ~in_val).sum()
    assert len(mixed) == len(train) + 3 * expected
    assert np.array_equal(
        mixed.x[: len(train)], train.x
    )  # the original split comes first, unchanged
    trained = {pixels_sha256(im) for im in mixed.x[len(train) :]}
    assert trained == set(fb.sha256[~held & ~in_val])
    assert set(slice_.sha256) == set(fb.sha256[held]) and not trained & set(slice_.sha256)
    assert np.array_equal(slice_.y, fb.y[held])
    assert report == {
        "enabled": True,
        "repeat": 3,
        "corrections": 52,
        "slice": int(held.sum()),
        "train_images": int(expected),
        "train_rows": 3 * int(expected),
        "left_out_in_val": int((in_val & ~held).sum()),
        "same_as_a_training_image": 0,
    }
    # Off: train is the original split; the slice is still held out (and scored by evaluate).
    off, off_slice, off_report = mix_feedback(
        train, val, fb, FEEDBACK.model_copy(update={"enabled": False})
    )
    assert off is train and off_report["train_images"] == 0
    assert np.array_equal(off_slice.sha256, slice_.sha256)


def test_mix_feedback_without_corrections_changes_nothing():
    train, val = make_split(40), make_split(10, 1)
    empty = corrections_from([], [], [], [], [])
    mixed, slice_, report = mix_feedback(train, val, empty, FEEDBACK)
    assert mixed is train and len(slice_) == 0 and slice_.x.shape == (0, 28, 28)
    assert report["corrections"] == report["slice"] == report["train_images"] == 0
