"""The `feedback` stage for real: `dvc repro feedback prepare` in a workspace copy, with shards written
the way the service writes them, a review through the review command, and the curated corrections
mixed into the prepared splits. No training."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, base_env, copy_workspace, run, set_params

from pipeline.core.feedback_log import Correction, pixels_sha256, shard_name, write_shard
from pipeline.shared.dataset import load_arrays, load_corrections, load_raw_split, load_split

pytestmark = pytest.mark.data

DVC = str(BIN / "dvc")
PY = str(BIN / "python")
PERMILLE = 500
PARAMS = {
    "prepare.max_train_samples": 2000,
    "prepare.max_test_samples": 2000,
    "prepare.feedback.slice_permille": PERMILLE,
    "prepare.feedback.repeat": 2,
}
T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


def in_slice(pixels: np.ndarray) -> bool:
    return int(pixels_sha256(pixels)[:8], 16) % 1000 < PERMILLE


def images(n_slice: int, n_train: int) -> list[np.ndarray]:
    """Random images: the first n_slice fall in the feedback slice, the next n_train outside it."""
    found: dict[bool, list[np.ndarray]] = {True: [], False: []}
    rng = np.random.default_rng(7)
    while len(found[True]) < n_slice or len(found[False]) < n_train:
        im = rng.integers(0, 256, (28, 28), dtype=np.uint8)
        found[in_slice(im)].append(im)
    return found[True][:n_slice] + found[False][:n_train]


def correction(pixels: np.ndarray, label: int, minute: int, source: str = "page") -> Correction:
    return Correction(
        id=uuid.uuid4().hex,
        time=T0 + dt.timedelta(minutes=minute),
        model_version="1",
        bento_model="fashion-mnist-cnn:abc",
        prediction_id=None,
        predicted=(label + 1) % 10,
        confidence=0.61,
        label=label,
        source=source,
        pixels_sha256=pixels_sha256(pixels),
        pixels=pixels,
    )


def md5s(ws: Path, *dirs: str) -> dict[str, str]:
    return {
        str(p.relative_to(ws)): hashlib.md5(p.read_bytes()).hexdigest()
        for d in dirs
        for p in sorted((ws / d).rglob("*"))
        if p.is_file() and p.name != ".gitignore"
    }


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = copy_workspace(tmp_path_factory.mktemp("feedback"))
    set_params(ws, **PARAMS)
    return ws


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    env = base_env()
    env.pop("FASHION_MNIST_MONITORING_DIR", None)  # the default: <repo>/monitoring
    return env


def test_feedback_stage_end_to_end(ws, env):
    outputs = ("data/feedback", "reports/feedback", "data/prepared", "reports/data")
    # No shards (a fresh clone, the suite's runs): an empty dataset, the same bytes every time.
    first = run([DVC, "repro", "feedback", "prepare"], ws, env)
    assert "Running stage 'feedback'" in first.stdout and "Running stage 'prepare'" in first.stdout
    empty = md5s(ws, *outputs)
    assert len(load_corrections(ws / "data/feedback/corrections.npz")) == 0
    assert load_arrays(ws / "data/prepared/feedback.npz")["x"].shape == (0, 28, 28)
    assert json.loads((ws / "reports/feedback/report.json").read_text())["corrections"] == 0
    before = {s: load_split(ws / f"data/prepared/{s}.npz") for s in ("train", "val", "test")}
    again = run([DVC, "repro", "feedback", "prepare"], ws, env)
    assert "Running stage 'feedback'" in again.stdout  # always: the records are outside DVC
    assert "Stage 'prepare' didn't change, skipping" in again.stdout
    assert md5s(ws, *outputs) == empty

    # Corrections as the service writes them: two shards, and one shard with a cut line.
    val = before["val"]
    test_image = load_raw_split(ws / "data/raw", "test").x[1234]
    pics = images(n_slice=3, n_train=4)
    batch1 = [correction(p, i % 10, i) for i, p in enumerate(pics)]
    batch1 += [correction(pics[3], 3, 10, source="script")]  # duplicate of pics[3] (label 3)
    batch2 = [correction(pics[0], 5, 20)]  # pics[0] sent as 0 and as 5: a conflict
    batch2 += [correction(test_image, 4, 21), correction(val.x[0], int(val.y[0]), 22)]
    records = ws / "monitoring" / "feedback"
    write_shard(records, shard_name(T0, "pod-a", 11, 0), batch1)
    write_shard(records, shard_name(T0 + dt.timedelta(hours=1), "pod-b", 12, 0), batch2)
    broken = records / shard_name(T0 + dt.timedelta(hours=2), "pod-b", 12, 1)
    broken.write_text('{"id": "cut short", "pixels"\n')

    # feedback.review: required, so everything waits; nothing changes for prepare.
    waiting = run([DVC, "repro", "feedback", "prepare"], ws, env)
    assert "Stage 'prepare' didn't change, skipping" in waiting.stdout
    assert "in_test_split: 1 correction(s) of Fashion-MNIST test images" in waiting.stdout
    report = json.loads((ws / "reports/feedback/report.json").read_text())
    assert report["shards"] == 3 and report["corrections"] == 11
    assert report["outcomes"] == {
        "accepted": 0,
        "duplicate": 0,
        "pending": 8,
        "conflict": 2,
        "rejected": 0,
        "in_test_split": 1,
        "capped_source": 0,
        "capped_class": 0,
        "unreadable": 1,
    }
    pending = rows(ws / "reports/feedback/pending.csv")
    assert len(pending) == 10 and [r["tile"] for r in pending] == [str(k) for k in range(10)]
    assert {r["status"] for r in pending if r["pixels_sha256"] == pixels_sha256(pics[0])} == {
        "conflict"
    }
    assert (ws / "reports/feedback/pending.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    archived = sorted(p.name for p in (ws / "data/feedback/shards").iterdir())
    assert archived == sorted(p.name for p in records.iterdir())

    # A person reviews: everything pending, the conflict settled as 5, one correction rejected.
    review = [PY, "-m", "pipeline.feedback", "review"]
    run([*review, "--accept-all", "--note", "checked on the sheet"], ws, env)
    run([*review, "--accept", pixels_sha256(pics[0]), "--label", "Sandal"], ws, env)
    run([*review, "--reject", batch1[6].id, "--note", "not a garment"], ws, env)
    decided = {r["id"]: r for r in rows(ws / "feedback/review.csv")}
    assert len(decided) == 9  # deciding again replaced the row of batch1[6]
    assert decided[batch1[6].id]["decision"] == "reject"
    assert decided[pixels_sha256(pics[0])]["label"] == "5"
    unknown = run_failing([*review, "--accept", "f" * 64], ws, env)
    assert "not a correction id or pixels_sha256" in unknown

    done = run([DVC, "repro", "feedback", "prepare"], ws, env)
    assert "Running stage 'prepare'" in done.stdout
    # Everything decided: accepting all pending accepts nothing, and says so without failing.
    review_csv = (ws / "feedback/review.csv").read_bytes()
    assert "nothing is pending" in run([*review, "--accept-all"], ws, env).stdout
    assert (ws / "feedback/review.csv").read_bytes() == review_csv
    report = json.loads((ws / "reports/feedback/report.json").read_text())
    assert report["outcomes"] == {
        "accepted": 7,
        "duplicate": 2,
        "pending": 0,
        "conflict": 0,
        "rejected": 1,
        "in_test_split": 1,
        "capped_source": 0,
        "capped_class": 0,
        "unreadable": 1,
    }
    assert report["accepted_by_source"] == {"page": 7}
    items = {r["id"]: r for r in rows(ws / "reports/feedback/items.csv") if r["id"]}
    assert items[batch2[1].id]["outcome"] == "in_test_split"
    assert items[batch1[6].id]["reason"] == "rejected in review.csv (not a garment)"
    assert items[batch1[0].id]["final_label"] == "5" and items[batch1[0].id]["label"] == "0"

    accepted = load_corrections(ws / "data/feedback/corrections.npz")
    expected = {pixels_sha256(p): i % 10 for i, p in enumerate(pics) if i != 6}
    expected[pixels_sha256(pics[0])] = 5
    expected[pixels_sha256(val.x[0])] = int(val.y[0])
    assert dict(zip(accepted.sha256.tolist(), accepted.y.tolist(), strict=True)) == expected
    assert list(accepted.time) == sorted(accepted.time)

    # prepare: the slice held out, the rest in train twice (repeat 2), val and test untouched.
    held = load_arrays(ws / "data/prepared/feedback.npz")
    slice_hashes = {pixels_sha256(p) for p in pics[:3]}
    if in_slice(val.x[0]):
        slice_hashes.add(pixels_sha256(val.x[0]))
    assert set(held["sha256"].tolist()) == slice_hashes
    assert [expected[h] for h in held["sha256"]] == held["y"].tolist()
    assert all(pixels_sha256(x) == h for x, h in zip(held["x"], held["sha256"], strict=True))
    train = load_split(ws / "data/prepared/train.npz")
    added = train.x[len(before["train"]) :]
    assert np.array_equal(train.x[: len(before["train"])], before["train"].x)
    trained = [pixels_sha256(x) for x in added]
    outside = {pixels_sha256(p) for p in pics[3:6]}  # pics[6] rejected; val.x[0] left out
    assert sorted(trained) == sorted([*outside, *outside])
    assert not set(trained) & slice_hashes
    for split in ("val", "test"):
        now = load_split(ws / f"data/prepared/{split}.npz")
        assert np.array_equal(now.x, before[split].x) and np.array_equal(now.y, before[split].y)
    mixed = json.loads((ws / "reports/data/feedback.json").read_text())
    assert mixed["train_images"] == 3 and mixed["train_rows"] == 6
    assert mixed["slice"] == len(slice_hashes) and mixed["left_out_in_val"] == (
        0 if in_slice(val.x[0]) else 1
    )

    # A teammate with the pulled dataset and no records directory regenerates the same output.
    curated = md5s(ws, "data/feedback", "reports/feedback")
    shutil.rmtree(ws / "monitoring")
    (ws / "data/feedback/corrections.npz").unlink()
    run([DVC, "repro", "feedback"], ws, env)
    assert md5s(ws, "data/feedback", "reports/feedback") == curated


def run_failing(cmd: list[str], cwd: Path, env: dict) -> str:
    """Run a command that must fail; its stderr."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, f"{cmd} succeeded:\n{proc.stdout}"
    return proc.stderr
