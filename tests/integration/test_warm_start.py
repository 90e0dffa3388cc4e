"""A real warm-started search: real Ray Tune, real Keras training, 32 px, weights none.

The earlier run is a real run directory's ``results.json`` (written by
``SearchSummary`` over the scanned data), so no first search has to run. What
the new search did is read from Ray Tune's own trial files and from the Optuna
study in its journal, not from our summary of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.hyperparameters import Hyperparameters
from tests.unit.test_warm_start import earlier_trial, write_earlier_run
from tuning.config import SearchConfig, load_config
from tuning.resume import ORPHANS_STUDY_ATTR
from tuning.run_dir import METRIC, STUDY_FILE, STUDY_NAME, TRIALS_DIR
from tuning.search import resume_search, run_search
from tuning.warm_start import EARLIER_TRIAL_ATTR, SEEDED_ATTR

pytestmark = pytest.mark.integration

SPACE = """
dropout: {type: float, low: 0.0, high: 0.6}
l2: {type: float, low: 1.0e-6, high: 1.0e-3, log: true}
unfreeze_blocks: {type: int, low: 0, high: 1}
finetune_learning_rate:
  {type: float, low: 1.0e-5, high: 1.0e-3, log: true, when: "unfreeze_blocks > 0"}
dense_units: {type: categorical, choices: [16, 32]}
batch_size: 8
"""
EARLIER_BEST: dict[str, Any] = {
    "dropout": 0.25,
    "l2": 2.0e-5,
    "unfreeze_blocks": 1,
    "finetune_learning_rate": 3.0e-4,
    "dense_units": 32,
}


def small_config(tmp_path: Path) -> SearchConfig:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return load_config(
        overrides={
            "weights": "none",
            "image_size": 32,
            "num_samples": 2,
            "max_epochs": 2,
            "head_epochs": 1,
            "grace_period": 1,
            "reduction_factor": 2,
            "max_concurrent_trials": 2,
            "cpus_per_trial": 1,
            "gpus_per_trial": 0.5,
            "include_dashboard": False,
            "cache_dir": str(tmp_path / "cache"),
            "space": str(space),
            "seed": 3,
        }
    )


def earlier_trials() -> list[Any]:
    """Eleven trials in the space (the best one fine-tunes), and two outside it."""
    trials = [earlier_trial(0, 0.9, **EARLIER_BEST)]
    for index in range(1, 11):
        trials.append(
            earlier_trial(
                index,
                0.4 + 0.03 * index,
                dropout=0.05 * index,
                l2=1.0e-5,
                unfreeze_blocks=0,
                dense_units=(16, 32)[index % 2],
            )
        )
    trials.append(earlier_trial(11, 0.95, unfreeze_blocks=2, l2=1.0e-5, dense_units=16))
    trials.append(earlier_trial(12, 0.3, dropout=0.5, l2=1.0e-5, dense_units=64))
    return trials


def tune_params(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Each trial's config as Ray Tune wrote it (params.json), by Tune trial id."""
    return {
        path.parent.name.removeprefix("trial_"): json.loads(path.read_text())
        for path in (run_dir / TRIALS_DIR).glob("trial_*/params.json")
    }


def last_reported(trial_dir: Path) -> dict[str, Any]:
    """A trial's last report, from Ray Tune's result.json."""
    lines = [line for line in (trial_dir / "result.json").read_text().splitlines() if line]
    return dict(json.loads(lines[-1]))


def load_study(run_dir: Path) -> Any:
    import optuna

    from tuning.tuner import journal_storage

    return optuna.load_study(study_name=STUDY_NAME, storage=journal_storage(run_dir / STUDY_FILE))


def test_a_warm_started_search_evaluates_the_earlier_best_first_and_resumes_without_reseeding(
    local_ray: None, shapes_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import optuna

    config = small_config(tmp_path)
    earlier = earlier_trials()
    write_earlier_run(tmp_path / "earlier", config, shapes_data, earlier)

    with caplog.at_level("INFO", logger="tuning.warm_start"):
        result = run_search(
            config,
            shapes_data,
            tmp_path / "run",
            progress=False,
            warm_start=tmp_path / "earlier",
        )

    assert (
        "warm start: skipped 2 of 13 earlier trials: unfreeze_blocks=2 is outside [0, 1] (1), "
        "dense_units=64 is not among [16, 32] (1)"
    ) in caplog.text
    # Ray Tune's first trial (its results list trials as Tune created them) ran the
    # earlier best configuration: Tune's own params.json says so.
    params = tune_params(tmp_path / "run")
    assert len(params) == 2
    first = result.trials[0]
    assert params[first.trial_id] == {**EARLIER_BEST, "batch_size": 8}
    assert Hyperparameters.from_mapping(params[first.trial_id]) == earlier[0].hyperparameters
    assert first.val_accuracy is not None

    # The study held the eleven earlier trials in the space, finished with their
    # values, before the trials of this search; the first of those evaluated the best.
    study = load_study(tmp_path / "run")
    trials = sorted(study.trials, key=lambda t: t.number)
    inside = [t for t in earlier if t.trial_id not in ("earlier_00011", "earlier_00012")]
    assert len(trials) == len(inside) + 2
    seeded, new = trials[: len(inside)], trials[len(inside) :]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in seeded)
    assert [t.user_attrs[EARLIER_TRIAL_ATTR] for t in seeded] == [t.trial_id for t in inside]
    assert [t.value for t in seeded] == [t.val_accuracy for t in inside]
    assert new[0].user_attrs[EARLIER_TRIAL_ATTR] == "earlier_00000"
    assert new[0].params == EARLIER_BEST
    assert new[0].value == last_reported(Path(first.path))[METRIC]
    assert EARLIER_TRIAL_ATTR not in new[1].user_attrs
    # Optuna was told the new trials' results as Tune reported them.
    reported = sorted(t.val_accuracy for t in result.trials if t.val_accuracy is not None)
    assert sorted(t.value for t in new) == reported
    assert study.user_attrs[SEEDED_ATTR] == str(tmp_path / "earlier" / "results.json")

    # Resumed, the search adds no earlier trial again and sets none of Tune's apart.
    resumed = resume_search(tmp_path / "run", progress=False)
    after = sorted(load_study(tmp_path / "run").trials, key=lambda t: t.number)
    assert [(t.number, t.state, t.params, t.value) for t in after] == [
        (t.number, t.state, t.params, t.value) for t in trials
    ]
    assert ORPHANS_STUDY_ATTR not in load_study(tmp_path / "run").user_attrs
    assert {t.trial_id for t in resumed.trials} == set(params)
