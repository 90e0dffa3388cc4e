"""``bottletune report`` on a real search: real Ray Tune, Optuna and ASHA, real Keras training.

The oracle for the reading of a running search is Ray Tune's own ``Result``
of each trial, as ``results.json`` keeps it: with ``results.json`` set aside,
the trials read back from their ``result.json`` files must be the same.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from PIL import Image

from tuning.config import load_config
from tuning.report import FIGURES, read_run, write_report
from tuning.run_dir import RESULTS_FILE, STUDY_FILE, STUDY_NAME
from tuning.search import run_search

pytestmark = pytest.mark.integration

SPACE = """
dropout: {type: float, low: 0.0, high: 0.6}
unfreeze_blocks: {type: int, low: 0, high: 1}
head_learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
augmentation: {type: categorical, choices: [0.0, 0.5]}
dense_units: {type: categorical, choices: [16]}
"""


def test_report_of_a_real_search_finished_and_as_if_still_running(
    local_ray: None, shapes_data: Path, tmp_path: Path
) -> None:
    import optuna

    from tuning.tuner import journal_storage

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    config = load_config(
        overrides={
            "weights": "none",
            "image_size": 32,
            "num_samples": 4,
            "max_epochs": 3,
            "head_epochs": 1,
            "grace_period": 1,
            "reduction_factor": 2,
            "max_concurrent_trials": 2,
            "cpus_per_trial": 1,
            "gpus_per_trial": 0,
            "include_dashboard": False,
            "cache_dir": str(tmp_path / "cache"),
            "space": str(space),
            "augmentation_views": 1,
            "seed": 5,
        }
    )
    run_dir = tmp_path / "run"
    result = run_search(config, shapes_data, run_dir, progress=False)
    summary = result.summary

    report = write_report(run_dir)

    assert [path.name for path in report.figures] == list(FIGURES)
    markdown = report.markdown.read_text()
    for path in report.figures:
        with Image.open(path) as image:
            assert image.size[0] >= 400 and image.size[1] >= 300
        assert f"]({path.name})" in markdown
    view = report.view
    assert view.best is not None and view.best.trial_id == summary.best_trial_id
    # Every epoch of every trial is on the wall-time axis, after the search started.
    assert len(view.points) == sum(trial.epochs for trial in summary.trials)
    assert all(point.wall_s >= 0 for point in view.points)
    study = optuna.load_study(study_name=STUDY_NAME, storage=journal_storage(run_dir / STUDY_FILE))
    assert len(study.trials) == len(summary.trials)

    # As if the search were still running: the same trials, read from Ray Tune's files.
    (run_dir / RESULTS_FILE).rename(tmp_path / "results.json.aside")
    running = read_run(run_dir)

    assert not running.finished
    from_tune = {trial.trial_id: trial for trial in summary.trials}
    from_disk = {trial.trial_id: trial for trial in running.trials}
    assert from_disk.keys() == from_tune.keys()
    for trial_id, trial in from_disk.items():
        expected = from_tune[trial_id]
        same_fields = dataclasses.replace(trial, path=expected.path, history=expected.history)
        assert same_fields == expected, trial_id
        assert Path(trial.path) == Path(expected.path)
        # results.json keeps pandas' 10 significant digits of each epoch; result.json all.
        assert len(trial.history) == len(expected.history)
        for row, kept in zip(trial.history, expected.history, strict=True):
            assert row.keys() == kept.keys()
            assert row == pytest.approx(kept, rel=1e-8), trial_id
    assert sorted(running.points, key=str) == sorted(view.points, key=str)
