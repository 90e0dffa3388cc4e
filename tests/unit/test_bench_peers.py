"""The peer benchmark's arguments and arithmetic, on synthetic curves (no search runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.peers import (
    SCALES,
    best_at,
    best_so_far,
    compare_curves,
    epoch_choice,
    parse_args,
    plain_wait_seconds,
    ratio,
    ray_curve,
    reported_epochs,
    sample_times,
    time_to_reach,
)

# Three sides: "fast" climbs early, "slow" late, "flat" never passes 0.7.
FAST = [(5.0, 0.6), (10.0, 0.8), (12.0, 0.75), (30.0, 0.9)]
SLOW = [(20.0, 0.5), (40.0, 0.7), (60.0, 0.85)]
FLAT = [(8.0, 0.7), (50.0, 0.65)]


def test_scale_sets_every_flag_a_flag_overrides() -> None:
    small = parse_args(["--scale", "small"])
    assert small.budget == SCALES["small"].budget
    assert small.epochs == SCALES["small"].epochs
    assert parse_args([]).budget == SCALES["full"].budget  # full is the default
    overridden = parse_args(["--scale", "small", "--budget", "7", "--epochs", "5"])
    assert (overridden.budget, overridden.epochs) == (7.0, 5)
    assert overridden.size == SCALES["small"].size


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--scale", "huge"], "'huge'"),
        (["--budget", "0"], "--budget: '0': must be a number > 0"),
        (["--target", "1.5"], "--target: '1.5'"),
        (["--classes", "1"], "--classes 1"),
        (["--scale", "small", "--epochs", "2", "--grace-period", "3"], "--grace-period 3"),
    ],
)
def test_bad_arguments_are_refused_naming_the_flag_and_value(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert named in capsys.readouterr().err


def test_best_so_far_keeps_only_improvements_in_time_order() -> None:
    assert best_so_far([(12.0, 0.75), *FAST]) == [(5.0, 0.6), (10.0, 0.8), (30.0, 0.9)]
    assert best_so_far([]) == []


def test_best_at_and_time_to_reach() -> None:
    assert best_at(FAST, 4.9) is None
    assert best_at(FAST, 5.0) == 0.6
    assert best_at(FAST, 29.0) == 0.8  # the dip at 12 s does not lower the best
    assert time_to_reach(FAST, 0.8) == 10.0
    assert time_to_reach(SLOW, 0.8) == 60.0
    assert time_to_reach(FLAT, 0.8) is None


def test_sample_times_end_at_end() -> None:
    assert sample_times(60.0, 3) == [20.0, 40.0, 60.0]
    with pytest.raises(ValueError, match="end=0"):
        sample_times(0.0, 3)


def test_ratio_is_none_when_it_cannot_be_computed() -> None:
    assert ratio(6.0, 3.0) == 2.0
    assert ratio(None, 3.0) is None
    assert ratio(6.0, None) is None
    assert ratio(6.0, 0.0) is None


def test_compare_curves_times_to_the_worst_sides_best() -> None:
    result = compare_curves({"fast": FAST, "slow": SLOW, "flat": FLAT}, "fast", end=40.0, samples=4)
    assert result["target"] == 0.7  # flat's best: every side reaches it
    sides = result["sides"]
    assert sides["fast"]["time_to_target"] == 10.0
    assert sides["slow"]["time_to_target"] == 40.0
    assert sides["flat"]["time_to_target"] == 8.0
    assert sides["slow"]["time_ratio"] == pytest.approx(4.0)
    assert sides["flat"]["time_ratio"] == pytest.approx(0.8)
    assert sides["fast"]["time_ratio"] == 1.0
    assert [p["seconds"] for p in result["points"]] == [10.0, 20.0, 30.0, 40.0]
    at_20 = result["points"][1]
    assert at_20["best"] == {"fast": 0.8, "slow": 0.5, "flat": 0.7}
    assert at_20["accuracy_ratio"]["slow"] == pytest.approx(0.8 / 0.5)
    assert at_20["accuracy_ratio"]["flat"] == pytest.approx(0.8 / 0.7)
    at_10 = result["points"][0]
    assert at_10["best"]["slow"] is None
    assert at_10["accuracy_ratio"]["slow"] is None


def test_compare_curves_with_a_fixed_target_some_side_misses() -> None:
    result = compare_curves({"fast": FAST, "flat": FLAT}, "fast", end=50.0, samples=1, target=0.85)
    assert result["target"] == 0.85
    assert result["sides"]["fast"]["time_to_target"] == 30.0
    assert result["sides"]["flat"]["time_to_target"] is None
    assert result["sides"]["flat"]["time_ratio"] is None


def test_compare_curves_refuses_an_unknown_reference_or_an_empty_side() -> None:
    with pytest.raises(ValueError, match="'nope'"):
        compare_curves({"fast": FAST}, "nope", end=10.0, samples=1)
    with pytest.raises(ValueError, match="flat"):
        compare_curves({"fast": FAST, "flat": []}, "fast", end=10.0, samples=1)


def test_epoch_choice_last_against_best() -> None:
    choice = epoch_choice([[0.5, 0.8, 0.7], [0.6, 0.9], [0.4], []])
    assert choice["trials"] == 3
    assert choice["mean_last"] == pytest.approx((0.7 + 0.9 + 0.4) / 3)
    assert choice["mean_best"] == pytest.approx((0.8 + 0.9 + 0.4) / 3)
    assert choice["mean_gain"] == pytest.approx(0.1 / 3)
    assert choice["trials_gaining"] == 1
    assert choice["search_best_last"] == 0.9
    assert choice["search_best_any_epoch"] == 0.9
    with pytest.raises(ValueError, match="no trial"):
        epoch_choice([[]])


def write_result_file(trial_dir: Path, rows: list[dict[str, object]]) -> None:
    trial_dir.mkdir(parents=True)
    (trial_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_ray_curve_reads_ray_tunes_result_files(tmp_path: Path) -> None:
    write_result_file(
        tmp_path / "a",
        [
            {"val_accuracy": 0.5, "timestamp": 1003, "training_iteration": 1},
            {"val_accuracy": 0.75, "timestamp": 1009, "training_iteration": 2},
        ],
    )
    write_result_file(tmp_path / "b", [{"val_accuracy": 0.6, "timestamp": 1005}, {"done": True}])
    trial_dirs = [tmp_path / "a", tmp_path / "b", tmp_path / "never-started"]
    assert ray_curve(trial_dirs, started=1000.5) == [(2.5, 0.5), (4.5, 0.6), (8.5, 0.75)]
    assert reported_epochs(tmp_path / "never-started") == []


def test_the_warm_variants_offset_is_the_first_trials_wait_for_its_features(
    tmp_path: Path,
) -> None:
    write_result_file(
        tmp_path / "later",
        [{"val_accuracy": 0.5, "timestamp": 1020, "startup_fetch_s": 0.1}],
    )
    write_result_file(
        tmp_path / "first",
        [{"val_accuracy": 0.6, "timestamp": 1010, "startup_fetch_s": 3.5},
         {"val_accuracy": 0.7, "timestamp": 1012}],
    )  # fmt: skip
    assert plain_wait_seconds([tmp_path / "later", tmp_path / "first"]) == 3.5
    assert plain_wait_seconds([tmp_path / "never-started"]) == 0.0


def test_a_damaged_result_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "result.json").write_text('{"val_accuracy": 0.5}\n{not json\n')
    with pytest.raises(ValueError, match=r"result\.json, line 2"):
        reported_epochs(tmp_path / "t")


def test_the_image_models_head_starts_where_the_trainers_does(
    shapes_data: Path, tmp_path: Path
) -> None:
    """On random-init features a head's init decides whether it learns in a few epochs:
    the KerasTuner and Ray Tune sides must start every trial from bottletune's."""
    import numpy as np

    from bench.peers import build_image_model
    from core.data import scan_dataset
    from core.features import FeatureCache, FeatureRequest
    from core.hyperparameters import Hyperparameters, TrainingSetup
    from core.training import RecipeTrainer

    index = scan_dataset(shapes_data, seed=0)
    request = FeatureRequest(
        backbone="vgg16", weights="none", image_size=32, cuts=("block5_pool",),
        augmentations=(), views=1,
    )  # fmt: skip
    bundle = FeatureCache(str(tmp_path / "cache")).ensure(index, request, progress=False)
    setup = TrainingSetup("vgg16", "none", 32, epochs=2, head_epochs=1, seed=3)
    for units in (16, 64):
        hparams = Hyperparameters(dense_units=units)
        trainer = RecipeTrainer(hparams, setup, bundle)
        expected = [np.array(weights) for weights in trainer.head.get_weights()]
        trainer.close()
        got = build_image_model(hparams, setup, 2).get_layer("head").get_weights()
        assert len(got) == len(expected)
        assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
