"""The per-trial benchmark's FLOP model and flags (no model is trained)."""

from __future__ import annotations

import pytest

from bench.cache_vs_naive import FlopModel, parse_args, source_text
from core.plan import FRESH_COST_LIMIT

FLOPS = FlopModel(conv={"low": 100, "mid": 40, "top": 10}, head=2)


def test_epoch_flops_count_the_frozen_layers_where_they_run() -> None:
    below = {"low"}  # frozen: 100 per image; trained: 40 + 10 + head 2 = 52
    never = FLOPS.epoch(below, 10, 4, frozen_runs="never")
    training = FLOPS.epoch(below, 10, 4, frozen_runs="training")
    always = FLOPS.epoch(below, 10, 4, frozen_runs="always")
    assert never == 10 * 3 * 52 + 4 * 52
    # Fresh augmentation runs the frozen layers on the training images only.
    assert training == never + 10 * 100
    assert always == training + 4 * 100


def test_a_fresh_trial_saves_only_the_validation_passes() -> None:
    below = {"low", "mid"}  # a deep unfreeze: little is trained
    naive = FLOPS.epoch(below, 10, 4, frozen_runs="always")
    # Only validation is saved: (10 * 176 + 4 * 152) / (10 * 176 + 4 * 12).
    assert naive / FLOPS.epoch(below, 10, 4, frozen_runs="training") == pytest.approx(2368 / 1808)
    assert naive / FLOPS.epoch(below, 10, 4, frozen_runs="never") > 5


def test_rows_say_where_the_cached_input_came_from() -> None:
    assert source_text({"source": "none", "planned": True}) == "plain features"
    assert source_text({"source": "fresh", "planned": True}) == "fresh"
    assert source_text({"source": "views", "planned": False}) == "views (not planned)"


def test_fresh_cost_limit_flag() -> None:
    assert parse_args([]).fresh_cost_limit == FRESH_COST_LIMIT
    assert parse_args(["--fresh-cost-limit", "4"]).fresh_cost_limit == 4.0
    assert parse_args(["--no-compare-views"]).compare_views is False
    with pytest.raises(SystemExit):
        parse_args(["--fresh-cost-limit", "-1"])
