"""Fine-tuning's pieces on tiny networks: its schedule, the architecture check that refuses another
network, and the params it refuses (that it starts from the champion's weights:
tests/test_fine_tune.py, the train stage for real)."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO
from test_train import small_params

from pipeline.core.params import ParamsError, parse_params
from pipeline.promotion.record import ALIAS
from pipeline.training.fine_tune import (
    CHAMPION_ALIAS,
    FineTuneError,
    check_architecture,
    schedule,
)
from pipeline.training.model import build_model

pytestmark = pytest.mark.model


def test_another_architecture_is_refused_naming_the_difference():
    model_params, _ = small_params()
    champion = build_model(model_params)
    check_architecture(champion, build_model(model_params), "v1")  # the same network: accepted
    first, *rest = model_params.conv_blocks
    wider = model_params.model_copy(
        update={"conv_blocks": [first.model_copy(update={"filters": 8}), *rest]}
    )
    with pytest.raises(FineTuneError, match=r"v1: layer conv_0 differs .*filters 4 vs 8"):
        check_architecture(champion, build_model(wider), "v1")
    shallower = model_params.model_copy(update={"conv_blocks": model_params.conv_blocks[:1]})
    with pytest.raises(FineTuneError, match="fine-tuning keeps the champion's architecture"):
        check_architecture(champion, build_model(shallower), "v1")


def test_the_fine_tune_schedule_applies_only_from_the_champion():
    _, train = small_params()
    assert schedule(train) is train  # scratch: train's own values, untouched
    tuned = schedule(train.model_copy(update={"init": "champion"}))
    tune = train.fine_tune
    assert (tuned.epochs, tuned.learning_rate, tuned.warmup_epochs) == (
        tune.epochs,
        tune.learning_rate,
        tune.warmup_epochs,
    )
    same = {"batch_size", "optimizer", "lr_schedule", "seed", "augmentation", "label_smoothing"}
    assert {k: getattr(tuned, k) for k in same} == {k: getattr(train, k) for k in same}
    assert CHAMPION_ALIAS == ALIAS  # train reads the alias register moves


def test_fine_tuning_params_are_checked():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert raw["train"]["init"] == "scratch"  # the default until fine-tuning passes the gate
    for change, words in (
        ({"init": "champion", "distribution": "multi_worker"}, "does not work with"),
        ({"init": "pretrained"}, "train.init: Input should be 'scratch' or 'champion'"),
        ({"fine_tune": {"epochs": 0, "learning_rate": 1e-4, "warmup_epochs": 0}}, "epochs"),
    ):
        bad = copy.deepcopy(raw)
        bad["train"] |= change
        with pytest.raises(ParamsError, match=words):
            parse_params(bad)
