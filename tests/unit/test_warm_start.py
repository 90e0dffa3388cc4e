"""Warm start: earlier results read, checked against this search and seeded into a real study.

The earlier runs are real run directories: a ``results.json`` written by
``SearchSummary`` over a scanned dataset, and a ``best.json`` written by
``bottletune export``. The studies are real Optuna studies with the search's
own TPE sampler and the space's own define-by-run adapter.
"""

from __future__ import annotations

import inspect
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.data import scan_dataset
from core.features import CacheStats
from core.hyperparameters import Hyperparameters
from search_spaces import SearchSpace, load_space, to_optuna
from tuning.config import SearchConfig, load_config
from tuning.export import export_best
from tuning.run_dir import ClusterSummary, RunDirError, SearchSummary, TrialSummary
from tuning.samplers import make_sampler
from tuning.tuner import open_study
from tuning.warm_start import (
    EARLIER_TRIAL_ATTR,
    SEEDED_ATTR,
    EarlierSearch,
    WarmStartError,
    convert,
    plan_warm_start,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SPACE = {
    "dropout": {"type": "float", "low": 0.0, "high": 0.6},
    "l2": {"type": "float", "low": 1.0e-6, "high": 1.0e-3, "log": True},
    "unfreeze_blocks": {"type": "int", "low": 0, "high": 2},
    "finetune_learning_rate": {
        "type": "float",
        "low": 1.0e-5,
        "high": 1.0e-3,
        "log": True,
        "when": "unfreeze_blocks > 0",
    },
    "dense_units": {"type": "categorical", "choices": [16, 32]},
    "batch_size": 8,
}
IN_SPACE = {"batch_size": 8, "l2": 1.0e-5, "dense_units": 16}
"""What every in-space earlier trial trained with besides its searched values."""


def earlier_trial(index: int, value: float | None, **values: Any) -> TrialSummary:
    """A finished trial as ``results.json`` lists it (its history ends at ``value``)."""
    hyperparameters = Hyperparameters(**{**IN_SPACE, **values})
    history = (
        []
        if value is None
        else [
            {"training_iteration": 1, "val_accuracy": value / 2},
            {"training_iteration": 2, "val_accuracy": value},
        ]
    )
    return TrialSummary(
        trial_id=f"earlier_{index:05d}",
        status="completed" if value is not None else "error",
        epochs=len(history),
        val_accuracy=value,
        val_loss=None if value is None else 1.0 - value,
        hyperparameters=hyperparameters,
        searched=dict(values),
        history=history,
        path=f"/earlier/trials/trial_earlier_{index:05d}",
        error=None if value is not None else "RuntimeError: died",
    )


def grid_trials(count: int, values: list[float] | None = None) -> list[TrialSummary]:
    """``count`` in-space trials spread over the space; trial 3 is the best unless given."""
    trials = []
    for index in range(count):
        unfreeze = index % 3
        chosen: dict[str, Any] = {
            "dropout": round(0.05 * (index % 12), 2),
            "l2": (1.0e-6, 1.0e-5, 1.0e-4, 1.0e-3)[index % 4],
            "unfreeze_blocks": unfreeze,
            "dense_units": (16, 32)[index % 2],
        }
        if unfreeze:
            chosen["finetune_learning_rate"] = (1.0e-5, 1.0e-4, 1.0e-3)[index % 3]
        value = values[index] if values else (0.95 if index == 3 else 0.5 + 0.01 * index)
        trials.append(earlier_trial(index, value, **chosen))
    return trials


def write_earlier_run(
    run_dir: Path, config: SearchConfig, data: Path, trials: list[TrialSummary]
) -> SearchSummary:
    """A finished run directory's ``results.json``, as ``run_search`` writes it."""
    index = scan_dataset(data, config.features.validation_fraction, config.seed)
    summary = SearchSummary.create(
        config=config,
        data_path=data,
        index=index,
        cache=CacheStats(),
        built_by=None,
        cluster=ClusterSummary("127.0.0.1:6379", ["127.0.0.1"]),
        trials=trials,
        seconds=12.5,
    )
    run_dir.mkdir(parents=True)
    summary.write(run_dir)
    return summary


def search_config(tmp_path: Path, **overrides: Any) -> SearchConfig:
    values: dict[str, Any] = {
        "weights": "none",
        "image_size": 32,
        "max_epochs": 2,
        "head_epochs": 1,
        "grace_period": 1,
        "cache_dir": str(tmp_path / "cache"),
        "seed": 0,
    }
    return load_config(overrides={**values, **overrides})


@pytest.fixture
def space() -> SearchSpace:
    return load_space(SPACE)


def fingerprint(config: SearchConfig, data: Path) -> str:
    return scan_dataset(data, config.features.validation_fraction, config.seed).fingerprint


def test_an_earlier_run_reads_from_its_directory_its_results_or_its_export(
    tmp_path: Path, shapes_data: Path
) -> None:
    config = search_config(tmp_path)
    summary = write_earlier_run(tmp_path / "run", config, shapes_data, grid_trials(5))
    exported = export_best(tmp_path / "run", tmp_path / "best.json")

    from_dir = EarlierSearch.read(tmp_path / "run")
    from_file = EarlierSearch.read(tmp_path / "run" / "results.json")
    from_export = EarlierSearch.read(tmp_path / "best.json")

    assert from_dir == from_file
    assert [t.trial_id for t in from_dir.trials] == [t.trial_id for t in summary.trials]
    assert from_dir.best_trial_id == "earlier_00003"
    assert from_dir.trials[3].intermediate_values == {1: 0.475, 2: 0.95}
    assert (from_export.backbone, from_export.image_size) == ("vgg16", 32)
    assert from_export.dataset_fingerprint == from_dir.dataset_fingerprint
    (only,) = from_export.trials
    assert only.trial_id == exported.trial_id == "earlier_00003"
    assert only.hyperparameters == summary.best.hyperparameters
    assert only.value == 0.95


def test_a_missing_path_or_an_unfinished_run_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(WarmStartError, match=r"--warm-start .*nowhere: no such file"):
        EarlierSearch.read(tmp_path / "nowhere")
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(RunDirError, match=r"unfinished/results\.json"):
        EarlierSearch.read(tmp_path / "unfinished")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(RunDirError, match=r"other\.json"):
        EarlierSearch.read(tmp_path / "other.json")


def test_trials_outside_the_new_space_are_skipped_and_counted_in_one_line(
    tmp_path: Path,
    shapes_data: Path,
    space: SearchSpace,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import optuna

    config = search_config(tmp_path)
    inside = grid_trials(4)
    outside = [
        earlier_trial(4, 0.99, unfreeze_blocks=3, finetune_learning_rate=1e-4),
        earlier_trial(5, 0.6, unfreeze_blocks=3),
        earlier_trial(6, 0.6, dropout=0.8),
        earlier_trial(7, 0.6, dense_units=64),
        earlier_trial(8, 0.6, l1=0.01),  # l1 is not in the space: trials use its default
        earlier_trial(9, 0.6, batch_size=16),  # the space fixes it at 8
        earlier_trial(10, None),
    ]
    write_earlier_run(tmp_path / "run", config, shapes_data, inside + outside)

    with caplog.at_level(logging.INFO, logger="tuning.warm_start"):
        warm = plan_warm_start(tmp_path / "run", config, space, fingerprint(config, shapes_data))

    line = (
        "warm start: skipped 7 of 11 earlier trials: unfreeze_blocks=3 is outside [0, 2] (2), "
        "dropout=0.8 is outside [0, 0.6] (1), dense_units=64 is not among [16, 32] (1), "
        "l1=0.01 is not searched here (trials use 0) (1), batch_size=16 is not the fixed 8 (1), "
        "reported no val_accuracy (1)"
    )
    assert warm.skipped_line() == line
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [line]
    # The earlier best (trial 4, 0.99) is outside, so the best inside is evaluated first.
    assert warm.first is not None and warm.first.trial_id == "earlier_00003"
    assert "the earlier best earlier_00004 is not" in caplog.text

    study = optuna.create_study(direction="maximize")
    warm.seed(study)
    added = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.user_attrs[EARLIER_TRIAL_ATTR] for t in added] == [t.trial_id for t in inside]
    for frozen, trial in zip(added, inside, strict=True):
        assert trial.val_accuracy is not None and frozen.value == trial.val_accuracy
        assert frozen.intermediate_values == {1: trial.val_accuracy / 2, 2: trial.val_accuracy}
        # Only what the space suggests: finetune_learning_rate only when blocks unfreeze;
        # batch_size is fixed, so the define-by-run function returns it, Optuna never sees it.
        assert frozen.params == {k: v for k, v in trial.searched.items() if k != "batch_size"}


def test_other_data_warns_and_goes_on(
    tmp_path: Path,
    shapes_data: Path,
    three_class_data: Path,
    space: SearchSpace,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = search_config(tmp_path)
    earlier = write_earlier_run(tmp_path / "run", config, shapes_data, grid_trials(3))
    other = fingerprint(config, three_class_data)

    with caplog.at_level(logging.WARNING, logger="tuning.warm_start"):
        warm = plan_warm_start(tmp_path / "run", config, space, other)

    (warning,) = [r.getMessage() for r in caplog.records]
    assert "ran on other data" in warning
    assert earlier.dataset.fingerprint in warning and other in warning
    assert len(warm.completed) == 3


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("backbone", "mobilenet", "backbone vgg16 (warm start) != mobilenet (this search)"),
        ("image_size", 48, "image_size 32 (warm start) != 48 (this search)"),
    ],
)
def test_another_backbone_or_image_size_is_refused_naming_both(
    tmp_path: Path, shapes_data: Path, space: SearchSpace, key: str, value: Any, message: str
) -> None:
    config = search_config(tmp_path)
    write_earlier_run(tmp_path / "run", config, shapes_data, grid_trials(3))
    export_best(tmp_path / "run", tmp_path / "best.json")
    other = config.replace(**{key: value})

    for source in (tmp_path / "run", tmp_path / "best.json"):
        with pytest.raises(WarmStartError, match=r"\(warm start\)") as raised:
            plan_warm_start(source, other, space, fingerprint(config, shapes_data))
        assert message in str(raised.value) and str(source) in str(raised.value)


def ask(study: Any, space: SearchSpace) -> dict[str, Any]:
    """One trial asked of the study and suggested by the space, as OptunaSearch does."""
    trial = study.ask()
    to_optuna(space)(trial)
    return dict(trial.params)


def test_the_study_holds_the_earlier_trials_first_and_evaluates_the_best_next(
    tmp_path: Path, shapes_data: Path, space: SearchSpace
) -> None:
    import optuna

    config = search_config(tmp_path)
    earlier = grid_trials(12)
    write_earlier_run(tmp_path / "run", config, shapes_data, earlier)
    warm = convert(EarlierSearch.read(tmp_path / "run"), space)
    study = optuna.create_study(direction="maximize", sampler=make_sampler("tpe", 0))

    assert warm.seed(study)

    states = [t.state for t in study.trials]
    complete = optuna.trial.TrialState.COMPLETE
    assert states == [complete] * 12 + [optuna.trial.TrialState.WAITING]
    assert [t.value for t in study.trials[:12]] == [t.val_accuracy for t in earlier]
    assert study.user_attrs[SEEDED_ATTR] == str(tmp_path / "run" / "results.json")
    best = earlier[3]
    first = ask(study, space)
    assert first == {k: v for k, v in best.searched.items() if k != "batch_size"}
    assert first["unfreeze_blocks"] == 0 and "finetune_learning_rate" not in first


def test_tpe_proposes_from_the_earlier_results_at_the_first_new_trial(
    tmp_path: Path, shapes_data: Path, space: SearchSpace
) -> None:
    import optuna

    startup = inspect.signature(optuna.samplers.TPESampler).parameters["n_startup_trials"]
    count = startup.default + 2
    config = search_config(tmp_path)

    def first_new_proposal(values: list[float] | None) -> dict[str, Any]:
        study = optuna.create_study(direction="maximize", sampler=make_sampler("tpe", 7))
        if values is not None:
            run_dir = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
            write_earlier_run(run_dir, config, shapes_data, grid_trials(count, values))
            convert(EarlierSearch.read(run_dir), space).seed(study)
            ask(study, space)  # the enqueued earlier best
            assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) >= (
                startup.default
            ), "TPE is past its startup trials before the first new one"
        return ask(study, space)

    random_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    at_random = ask(random_study, space)
    cold = first_new_proposal(None)
    rising = first_new_proposal([0.1 + 0.05 * i for i in range(count)])
    falling = first_new_proposal([0.9 - 0.05 * i for i in range(count)])

    # A cold TPE study is in its startup trials: it samples as the random sampler does.
    assert cold == at_random
    # Warm, TPE samples from its model of the earlier results: another proposal, and one
    # that depends on their values (the same trials, scored the other way round).
    assert rising != at_random and falling != at_random
    assert rising != falling


def test_a_seeded_study_is_not_seeded_twice(
    tmp_path: Path, shapes_data: Path, space: SearchSpace
) -> None:
    import optuna

    config = search_config(tmp_path)
    write_earlier_run(tmp_path / "run", config, shapes_data, grid_trials(4))
    warm = convert(EarlierSearch.read(tmp_path / "run"), space)
    storage = optuna.storages.InMemoryStorage()
    warm.seed(open_study(storage))
    before = len(optuna.load_study(study_name="bottletune", storage=storage).trials)

    warm.seed(open_study(storage))

    assert before == 5
    assert len(optuna.load_study(study_name="bottletune", storage=storage).trials) == before
    used = optuna.create_study(direction="maximize")
    used.ask()
    with pytest.raises(WarmStartError, match="holds trials already"):
        warm.seed(used)


def test_tune_refuses_warm_start_with_resume(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli", "tune", "--resume", str(tmp_path), "--warm-start", "x"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "--warm-start: a resumed search keeps the trials it was seeded with" in result.stderr


def test_a_resume_matches_tunes_trials_to_the_study_after_the_earlier_ones(
    tmp_path: Path, shapes_data: Path, space: SearchSpace
) -> None:
    import optuna

    from tuning.resume import fail_orphaned_study_trials
    from tuning.tuner import journal_storage
    from tuning.warm_start import seeded_trial_count

    config = search_config(tmp_path)
    write_earlier_run(tmp_path / "run", config, shapes_data, grid_trials(4))
    storage = journal_storage(tmp_path / "optuna.journal")
    assert seeded_trial_count(storage, "bottletune") == 0, "no study yet"
    convert(EarlierSearch.read(tmp_path / "run"), space).seed(open_study(storage))
    study = optuna.load_study(study_name="bottletune", storage=storage)
    # Tune's trials: two finished before its last checkpoint, one asked for after it.
    for _ in range(2):
        trial = study.ask()
        to_optuna(space)(trial)
        study.tell(trial, 0.5)
    orphan = study.ask()
    to_optuna(space)(orphan)

    seeded = seeded_trial_count(storage, "bottletune")
    set_apart = fail_orphaned_study_trials(storage, "bottletune", 2 + seeded)

    assert seeded == 4
    assert set_apart == [orphan.number] == [6]
    states = [t.state for t in optuna.load_study(study_name="bottletune", storage=storage).trials]
    complete = optuna.trial.TrialState.COMPLETE
    assert states == [complete] * 6 + [optuna.trial.TrialState.FAIL]
