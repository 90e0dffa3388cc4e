"""A search whose driver died while Ray Tune saved it resumes: the searcher adopts the trial
that Tune's experiment state holds but the searcher's saved state does not know."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from search_spaces import load_space, to_optuna
from tuning.resumable_search import ResumableOptunaSearch, trial_config
from tuning.tuner import journal_storage

SPACE = {"dropout": {"type": "float", "low": 0.0, "high": 0.5}, "dense_units": 16}


def searcher(journal: Path) -> ResumableOptunaSearch:
    return ResumableOptunaSearch(
        space=to_optuna(load_space(SPACE)),
        metric="val_accuracy",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        storage=journal_storage(journal),
        study_name="s",
    )


def study(journal: Path) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=journal_storage(journal))


def test_a_trial_the_saved_state_missed_continues_as_its_running_study_trial(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "optuna.journal"
    before = searcher(journal)
    first = before.suggest("aaa")
    before.save(str(tmp_path / "searcher-state.pkl"))  # Tune's last complete save
    second = before.suggest("bbb")  # asked for after it; then the driver died
    assert first is not None and second is not None

    after = searcher(journal)
    after.restore(str(tmp_path / "searcher-state.pkl"))
    assert "bbb" not in after._ot_trials
    with caplog.at_level("WARNING", logger="tuning.resumable_search"):
        after.on_trial_result(
            "bbb",
            {"val_accuracy": 0.5, "training_iteration": 1, "config/dropout": second["dropout"]},
        )
        after.on_trial_complete("bbb", {"val_accuracy": 0.75, "config": second})
    after.on_trial_complete("aaa", {"val_accuracy": 0.25, "config": first})

    trials = study(journal).trials
    assert len(trials) == 2, "no second study trial was asked for the adopted one"
    assert [(t.state, t.value) for t in trials] == [
        (optuna.trial.TrialState.COMPLETE, 0.25),
        (optuna.trial.TrialState.COMPLETE, 0.75),
    ]
    assert trials[1].params == {"dropout": second["dropout"]}
    assert "trial bbb" in caplog.text and "continues as Optuna trial 1" in caplog.text


def test_a_trial_without_a_running_study_trial_is_told_as_new(tmp_path: Path) -> None:
    journal = tmp_path / "optuna.journal"
    fresh = searcher(journal)

    fresh.on_trial_complete("ccc", {"val_accuracy": 0.5, "config": {"dropout": 0.125}})

    (trial,) = study(journal).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.5
    assert trial.params == {"dropout": 0.125}


def test_a_report_without_a_config_is_skipped_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "optuna.journal"
    with caplog.at_level("WARNING", logger="tuning.resumable_search"):
        searcher(journal).on_trial_complete("ddd", None, error=True)

    assert study(journal).trials == []
    assert "without its config" in caplog.text


def test_the_config_is_read_nested_or_flattened() -> None:
    assert trial_config({"config": {"dropout": 0.1}}) == {"dropout": 0.1}
    assert trial_config({"config/dropout": 0.1, "val_accuracy": 1}) == {"dropout": 0.1}
    assert trial_config({"val_accuracy": 1}) is None and trial_config(None) is None
