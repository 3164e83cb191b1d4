"""benchmarks/train_benchmark.py, the tool the default's accuracy-per-cost target is measured
with: its overrides and a real run on the small prepared subset (one epoch each, so seconds, not
a benchmark)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.train_benchmark import main, with_overrides
from harness.results import read, result_files
from pipeline.core.fashion_mnist import IMAGE_SIZE, NUM_CLASSES
from pipeline.core.inference import file_sha256
from pipeline.core.params import ParamsError, load_params
from pipeline.reporting.flops import forward_flops
from pipeline.shared.dataset import load_split

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[1]


def raw_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_overrides_change_params_like_dvc_exp_run_and_name_what_is_wrong():
    params = with_overrides(
        raw_params(), ["model.conv_blocks.1.filters=16", "train.epochs=3", "model.dense.0.units=64"]
    )
    assert params.model.conv_blocks[1].filters == 16
    assert params.train.epochs == 3
    assert params.model.dense[0].units == 64

    with pytest.raises(ParamsError, match=r"--set trian\.epochs=3: params.yaml has no key trian"):
        with_overrides(raw_params(), ["trian.epochs=3"])
    with pytest.raises(ParamsError, match=r"no key model\.conv_blocks\.9\.filters"):
        with_overrides(raw_params(), ["model.conv_blocks.9.filters=8"])
    with pytest.raises(ParamsError, match=r"no key train\.epochs\.x"):  # into a number
        with_overrides(raw_params(), ["train.epochs.x=1"])
    with pytest.raises(ParamsError, match=r"expected KEY=VALUE"):
        with_overrides(raw_params(), ["train.epochs"])
    with pytest.raises(ParamsError, match=r"model\.conv_blocks\.1\.filters: .*greater than"):
        with_overrides(raw_params(), ["model.conv_blocks.1.filters=0"])


def test_benchmark_trains_a_candidate_and_the_reference_and_reports_them(
    prepared_workspace: Path, tmp_path: Path
):
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "train_benchmark.py"),
            "--epochs",
            "1",
            "--set",
            "model.conv_blocks.1.filters=16",
            "--name",
            "narrow",
            "--results",
            str(tmp_path),
        ],
        cwd=prepared_workspace,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (out,) = result_files(tmp_path)
    data = read(out)  # the result-file format: machine, models by SHA-256, figures
    report = data["train"]["figures"]
    params = load_params(prepared_workspace / "params.yaml")
    assert report["train_samples"] == len(
        load_split(prepared_workspace / "data/prepared/train.npz")
    )
    assert data["machine"]["cpu"] and data["machine"]["cpus"] >= 1
    models = {m["name"]: m for m in data["train"]["models"]}
    assert models["narrow"]["sha256"] == file_sha256(tmp_path / "models" / "train-narrow.keras")
    assert "conv 32p-16" in models["narrow"]["what"] and "reference" in models["reference"]["what"]
    narrow, ref = report["results"]
    assert (narrow["model"], ref["model"]) == ("narrow", "reference")
    assert narrow["overrides"] == ["model.conv_blocks.1.filters=16"] and ref["overrides"] == []
    assert narrow["epochs"] == ref["epochs"] == 1

    blocks = [
        b.model_copy(update={"filters": 16}) if i == 1 else b
        for i, b in enumerate(params.model.conv_blocks)
    ]
    flops = sum(forward_flops(IMAGE_SIZE, blocks, params.model.dense, NUM_CLASSES).values())
    assert narrow["mflops_per_image"] == round(flops / 1e6, 2)
    # The candidate has the flip inside (params.yaml), so flipping again from outside changes
    # nothing; the reference has no flip, and its own mirror images are new to it.
    assert params.model.test_time_flip
    assert narrow["val_accuracy"] == narrow["val_accuracy_flip_tta"]
    assert narrow["test_accuracy"] == narrow["test_accuracy_flip_tta"]
    assert 0.1 < ref["val_accuracy"] <= 1 and ref["training_seconds"] > 0

    table = done.stdout
    assert "narrow" in table and "reference" in table and data["machine"]["cpu"] in table
    ref_row = next(line for line in table.splitlines() if line.startswith("reference"))
    assert " 1.0 " in ref_row  # its own time is 1x the reference


def test_benchmark_refuses_an_unknown_key_before_training(
    prepared_workspace, tmp_path, monkeypatch
):
    monkeypatch.chdir(prepared_workspace)
    monkeypatch.setattr(
        sys, "argv", ["train_benchmark.py", "--set", "train.epochz=3", "--results", str(tmp_path)]
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    message = str(exit_.value.code)
    assert message.startswith(
        "train_benchmark: params.yaml with train.epochz=3: invalid parameters"
    )
    assert "train.epochz" in message.splitlines()[-1]
    assert result_files(tmp_path) == []
