"""The training state on disk: its key (params and data) and claiming it (stale states deleted,
those of other trainings kept)."""

from __future__ import annotations

import pytest

from pipeline.training.resume import STATE_DIR, claimed_state, state_key

pytestmark = pytest.mark.unit


def test_state_key_changes_with_params_and_data():
    params = {"train": {"epochs": 3, "seed": 42}}
    key = state_key(params, "data-a")
    assert key == state_key({"train": {"seed": 42, "epochs": 3}}, "data-a")
    assert key != state_key({"train": {"epochs": 4, "seed": 42}}, "data-a")
    assert key != state_key(params, "data-b")


def test_claiming_a_state_deletes_stale_ones_but_not_those_in_use(tmp_path):
    base = tmp_path / STATE_DIR
    (base / "stale" / "epoch-0003").mkdir(parents=True)
    with claimed_state(tmp_path, "running"):  # another training, with other params
        (base / "stale" / "epoch-0003").mkdir(parents=True)
        with claimed_state(tmp_path, "mine") as state:
            assert state.directory == base / "mine"
            assert sorted(p.name for p in base.iterdir()) == ["mine", "running"]
            with claimed_state(tmp_path, "mine") as twice:
                assert twice is None  # the same training twice: the second keeps no state here
