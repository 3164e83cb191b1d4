"""The typed params loader: the real params.yaml loads, bad values name their key."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO

from pipeline.core.params import ParamsError, load_params, parse_params

pytestmark = pytest.mark.unit

RAW = yaml.safe_load((REPO / "params.yaml").read_text())


def with_change(path: str, value: object, delete: bool = False) -> dict:
    raw = copy.deepcopy(RAW)
    *parents, leaf = path.split(".")
    node = raw
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if delete:
        del node[leaf]
    else:
        node[leaf] = value
    return raw


def test_repository_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.serve.bento_model_name
    assert params.fetch.timeout_s > 0


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("train.epocs", 3, "train.epocs: unknown key"),
        ("train.epochs", "many", "train.epochs: Input should be a valid integer"),
        ("train.batch_size", 0, "train.batch_size: Input should be greater than or equal to 1"),
        (
            "model.conv_blocks.0.padding",
            "full",
            "model.conv_blocks.0.padding: Input should be 'valid' or 'same'",
        ),
        ("prepare.val_fraction", 1.5, "prepare.val_fraction: Input should be less than 1"),
        ("fetch.timeout_s", 0, "fetch.timeout_s: Input should be greater than 0"),
        (
            "register.min_accuracy",
            2,
            "register.min_accuracy: Input should be less than or equal to 1",
        ),
        ("monitor.p_value", 1.5, "monitor.p_value: Input should be less than 1"),
        ("monitor.window", 24, "monitor.window: unknown key"),
        (
            "serve.monitoring.low_confidence",
            0,
            "serve.monitoring.low_confidence: Input should be greater than 0",
        ),
    ],
)
def test_bad_values_name_the_key(path, value, expected):
    with pytest.raises(ParamsError) as err:
        parse_params(with_change(path, value))
    assert expected in str(err.value)


def test_missing_key_is_named():
    with pytest.raises(ParamsError, match=r"train\.seed: missing key"):
        parse_params(with_change("train.seed", None, delete=True))


def test_architecture_that_shrinks_below_one_pixel_names_the_layer():
    raw = copy.deepcopy(RAW)
    block = {
        "filters": 8,
        "kernel_size": 5,
        "strides": 2,
        "padding": "valid",
        "batch_norm": False,
        "activation": "relu",
        "pool": {"size": 2, "strides": 2},
        "dropout": 0.0,
    }
    raw["model"]["conv_blocks"] = [block, block]  # 28 -> 12 -> 6 -> 1 -> pool 2 on 1x1 fails
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert (
        "model.conv_blocks[1].pool: a pool layer with f=2, s=2, padding=valid cannot take a 1x1 input"
        in str(err.value)
    )


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(tmp_path / "absent.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
