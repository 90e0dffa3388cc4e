"""The whole-search benchmark's arithmetic, on synthetic Ray Tune rows (no search runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.peers import reported_epochs
from bench.search import (
    CACHED,
    COST,
    NAIVE,
    Side,
    command_line,
    compare_sides,
    configurations_in_common,
    first_epochs,
    format_ratio,
    parse_args,
    render,
    report_seconds,
    side_curve,
    verdict,
)

STARTED = 1000.2
"""A side's start as time.time(): reports are whole seconds after it."""


def row(timestamp: int, accuracy: float | None, epoch: int, **extra: float) -> dict[str, object]:
    """One line of a trial's result.json, as Ray Tune writes it."""
    return {"timestamp": timestamp, "val_accuracy": accuracy, "training_iteration": epoch, **extra}


def side(name: str, curve: list[tuple[float, float]], seconds: float, **fields: object) -> Side:
    values: dict[str, object] = {
        "name": name,
        "asha_time_attr": "cost" if name == COST else "epochs",
        "cache": {NAIVE: "none", COST: "warm"}.get(name, "cold"),
        "seconds": seconds,
        "clock_offset_s": 0.0,
        "trials": [],
        "curve": curve,
        "first_epochs": [],
        **fields,
    }
    return Side(**values)  # type: ignore[arg-type]


def test_a_report_is_timed_at_the_middle_of_its_whole_second() -> None:
    # Ray truncates the report's time to 1003: it came in [1003, 1004).
    assert report_seconds({"timestamp": 1003}, STARTED) == pytest.approx(3.3)
    assert report_seconds({"timestamp": 1003}, STARTED, offset=10.0) == pytest.approx(13.3)
    # A report in the side's first second is never before the start.
    assert report_seconds({"timestamp": 999}, STARTED) == 0.0


def test_side_curve_holds_every_finite_epoch_of_every_trial_in_time_order() -> None:
    trials: list[list[dict[str, object]]] = [
        [row(1010, 0.5, 1), row(1020, 0.75, 2)],
        [row(1005, 0.6, 1), row(1015, float("nan"), 2), {"timestamp": 1016, "done": True}],
        [],
    ]
    curve = side_curve(trials, STARTED, offset=2.0)
    assert [seconds for seconds, _ in curve] == pytest.approx([7.3, 12.3, 22.3])
    assert [accuracy for _, accuracy in curve] == [0.6, 0.5, 0.75]


def test_first_epochs_earliest_trial_first_with_its_epoch_seconds() -> None:
    trials = [
        [row(1010, 0.5, 1, epoch_seconds=6.0, time_total_s=9.0), row(1020, 0.7, 2)],
        [row(1004, 0.6, 1, epoch_seconds=3.5, time_total_s=4.0)],
        [row(1030, 0.6, 2)],  # a trial without its first report is left out
    ]
    firsts = first_epochs(trials, STARTED)
    assert [first["epoch_seconds"] for first in firsts] == [3.5, 6.0]
    assert firsts[0]["time_total_s"] == 4.0
    assert firsts[0]["startup_total_s"] is None  # the naive trainable does not report it
    assert firsts[0]["seconds"] == pytest.approx(4.3)


def test_ratio_formatting_and_verdicts() -> None:
    assert format_ratio(3.4149) == "3.41×"
    assert format_ratio(None) == "-"
    assert format_ratio(float("inf")) == "-"
    assert verdict(3.0, 3.0, at_least=True) == "met"
    assert verdict(2.9, 3.0, at_least=True) == "not met"
    assert verdict(1.6, 1.5, at_least=False) == "not met"
    assert verdict(1.2, 1.5, at_least=False) == "met"
    assert verdict(None, 1.5, at_least=False) == "not measured"


# cached climbs early; naive reaches its best, 0.8, at 90 s; cost at 25 s after 15 s of
# warm-cache offset; the shortest search (cost) ends at 60 s.
SIDES = {
    CACHED: side(CACHED, [(20.0, 0.5), (30.0, 0.82), (50.0, 0.7)], 80.0),
    NAIVE: side(
        NAIVE,
        [(40.0, 0.55), (90.0, 0.8), (100.0, 0.6)],
        120.0,
        first_epochs=[
            {"seconds": 40.0, "time_total_s": 30.0, "epoch_seconds": 16.0},
            {"seconds": 41.0, "time_total_s": 30.0, "epoch_seconds": 20.0},
        ],
    ),
    COST: side(
        COST,
        [(25.0, 0.8), (55.0, 0.85)],
        60.0,
        clock_offset_s=15.0,
        first_epochs=[{"seconds": 25.0, "time_total_s": 7.0, "epoch_seconds": 1.0}],
    ),
}
SIDES[CACHED].first_epochs = [
    {
        "seconds": 20.0,
        "time_total_s": 12.0,
        "epoch_seconds": 1.5,
        "startup_total_s": 9.0,
        "startup_fetch_s": 4.0,
    },  # fmt: skip
]


def test_time_to_target_is_to_the_naive_searchs_best() -> None:
    comparison = compare_sides(SIDES, time_points=3)
    assert comparison["target"] == 0.8
    assert {name: s["time_to_target"] for name, s in comparison["sides"].items()} == {
        CACHED: 30.0,
        NAIVE: 90.0,
        COST: 25.0,
    }
    ratios = comparison["ratios"]
    assert ratios["naive_over_cached_time_to_target"] == pytest.approx(3.0)
    assert ratios["naive_over_cached_wall"] == pytest.approx(1.5)
    assert ratios["epochs_over_cost_time_to_target"] == pytest.approx(30.0 / 25.0)
    assert ratios["epochs_over_cost_wall"] == pytest.approx(80.0 / 60.0)


def test_best_so_far_at_equal_wall_time_ends_at_the_shortest_search() -> None:
    comparison = compare_sides(SIDES, time_points=3)
    assert comparison["end"] == 60.0
    points = comparison["points"]
    assert [point["seconds"] for point in points] == [20.0, 40.0, 60.0]
    assert points[0]["best"] == {CACHED: 0.5, NAIVE: None, COST: None}
    # The dip to 0.7 at 50 s does not lower cached's best so far.
    assert points[2]["best"] == {CACHED: 0.82, NAIVE: 0.55, COST: 0.85}


def test_a_target_a_side_misses_leaves_its_ratio_unmeasured() -> None:
    comparison = compare_sides(SIDES, target=0.84, time_points=1)
    assert comparison["target_source"] == "--target"
    assert comparison["sides"][COST]["time_to_target"] == 55.0
    assert comparison["sides"][CACHED]["time_to_target"] is None
    assert comparison["ratios"]["naive_over_cached_time_to_target"] is None
    assert comparison["ratios"]["epochs_over_cost_time_to_target"] is None


def test_first_epoch_ratio_is_against_the_naive_first_trials_epoch() -> None:
    first = compare_sides(SIDES)["first_epoch"]
    assert first["cached_first_report_s"] == 20.0
    assert first["uncached_epoch_s"] == 16.0  # the earliest naive trial's, not the median
    assert first["uncached_epoch_median_s"] == 18.0
    assert first["ratio"] == pytest.approx(20.0 / 16.0)
    assert first["naive_first_report_s"] == 40.0
    # Where the cached wait went: 8 s before its first trial began, 12 s in it.
    assert first["cached_before_first_trial_s"] == pytest.approx(8.0)
    assert first["cached_first_trial_s"] == 12.0
    assert first["cached_first_trial_startup_s"] == 9.0
    assert first["cached_first_trial_fetch_s"] == 4.0  # of it, waiting for the plain pass
    assert first["cached_first_epoch_s"] == 1.5


def test_the_cold_caches_delay_is_against_the_warm_runs_own_clock() -> None:
    # cached-cost's first trial began 25 - 7 = 18 s on its clock, 15 s of which is the
    # offset: 3 s into its own run, against 8 s for the cold cache.
    assert SIDES[COST].before_first_trial_s == pytest.approx(3.0)
    assert compare_sides(SIDES)["cold_cache_delay_s"] == pytest.approx(5.0)
    assert SIDES[NAIVE].before_first_trial_s == pytest.approx(10.0)
    assert side(CACHED, [], 1.0).before_first_trial_s is None


def test_configurations_in_common_count_each_shared_sample() -> None:
    a = [{"dropout": 0.1, "l2": 1e-4}, {"dropout": 0.2, "l2": 1e-4}, {"dropout": 0.2, "l2": 1e-4}]
    b = [{"l2": 1e-4, "dropout": 0.2}, {"dropout": 0.3, "l2": 1e-4}]
    assert configurations_in_common(a, b) == 1
    assert configurations_in_common(a, a) == 3


def test_the_printed_command_reproduces_every_setting() -> None:
    args = parse_args(["--size", "32", "--per-class", "10", "--samples", "3", "--no-doc"])
    command = command_line(args)
    assert command.startswith("python -m bench.search --size 32 --classes 3 --per-class 10 ")
    assert "--target" not in command
    assert command.endswith("--no-doc")
    again = parse_args(command.split()[3:])
    assert vars(again) == vars(args)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--epochs", "2", "--grace-period", "3"], "--grace-period 3"),
        (["--classes", "1"], "--classes 1"),
        (["--target", "1.5"], "--target: '1.5'"),
        (["--reduction-factor", "1"], "--reduction-factor 1"),
    ],
)
def test_bad_arguments_are_refused_naming_the_flag_and_value(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert named in capsys.readouterr().err


def test_the_report_shows_every_side_and_ratio(tmp_path: Path) -> None:
    # Rows as Ray Tune's result.json holds them, read back through the reader the benchmark uses.
    trial_dir = tmp_path / "trial"
    trial_dir.mkdir()
    rows = [row(1010, 0.5, 1), row(1020, 0.82, 2)]
    (trial_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cached = side(
        CACHED,
        side_curve([reported_epochs(trial_dir)], STARTED),
        80.0,
        trials=[{"trial": "t", "val_accuracy": 0.82, "epochs": 2, "hyperparameters": {}}],
        extraction={
            "seconds": 15.0,
            "plain_pass_seconds": 5.0,
            "view_passes": 2,
            "view_passes_seconds": 10.0,
            "entries_built": 6,
        },
    )
    cached.trials[0]["error"] = None
    sides = {CACHED: cached, NAIVE: SIDES[NAIVE], COST: SIDES[COST]}
    args = parse_args(["--no-doc"])
    text = render(args, sides, compare_sides(sides), {"cpus_available": 2}, markdown=True)
    assert "| cached | epochs | cold |" in text
    assert "| cached-cost | cost | warm (+15.0 s extraction) |" in text
    assert "Time to target, naive / cached: **4.43×** (goal ≥ 3×: met)" in text
    assert "goal ≤ 1.5×: met" in text  # 10.3 s against a 16 s uncached epoch
    assert "Reproduce: `python -m bench.search --size 128" in text
