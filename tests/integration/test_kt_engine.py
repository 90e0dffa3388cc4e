"""Real KerasTuner searches: its own oracles, real Keras training on 32 px shapes, weights none.

Each search checks its results against KerasTuner's own files (``trial.json``
in ``RUN_DIR/keras_tuner``), not only against our reading of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cli.main import main
from tuning.config import SearchConfig, load_config
from tuning.run_dir import BestConfig, FinalMetrics, SearchSummary
from tuning.search import run_search

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# Head-only and one-block fine-tuning trials (two cuts), no augmentation.
SPACE = """
dropout: {type: float, low: 0.0, high: 0.6}
unfreeze_blocks: {type: int, low: 0, high: 1}
finetune_learning_rate:
  {type: float, low: 1.0e-5, high: 1.0e-3, log: true, when: "unfreeze_blocks > 0"}
dense_units: {type: categorical, choices: [8, 16]}
"""
HEAD_ONLY_SPACE = """
dropout: {type: float, low: 0.0, high: 0.6}
head_learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
dense_units: {type: categorical, choices: [8, 16]}
"""


def settings(tmp_path: Path, space: str = SPACE, **overrides: object) -> dict[str, object]:
    space_file = tmp_path / "space.yaml"
    space_file.write_text(space)
    values: dict[str, object] = {
        "engine": "keras-tuner",
        "weights": "none",
        "image_size": 32,
        "num_samples": 2,
        "max_epochs": 2,
        "head_epochs": 1,
        "cache_dir": str(tmp_path / "cache"),
        "space": str(space_file),
        "seed": 3,
    }
    values.update(overrides)
    return values


def small_config(tmp_path: Path, space: str = SPACE, **overrides: object) -> SearchConfig:
    return load_config(overrides=settings(tmp_path, space, **overrides))


def keras_tuner_trials(run_dir: Path) -> dict[str, dict[str, Any]]:
    """KerasTuner's own record of each trial (``trial.json``), by trial id."""
    trials = {}
    for path in sorted((run_dir / "keras_tuner").glob("trial_*/trial.json")):
        record = json.loads(path.read_text())
        trials[record["trial_id"]] = record
    return trials


def recipe_values(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if not name.startswith("tuner/")}


def test_cli_tune_export_train_without_ray_and_no_resume(
    shapes_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    arguments = ["tune", "--engine", "keras-tuner", "--data", str(shapes_data)]
    arguments += ["--out", str(run_dir), "--quiet"]
    for key, value in settings(tmp_path, kt_oracle="random").items():
        if key != "engine":
            arguments += ["--set", f"{key}={value}"]
    # The search in a child process, which reports whether anything imported Ray.
    code = (
        "import sys\nfrom cli.main import main\n"
        f"code = main({arguments!r})\n"
        "print('ray imported:', 'ray' in sys.modules)\nsys.exit(code)\n"
    )
    tuned = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )

    assert tuned.returncode == 0, tuned.stderr[-4000:]
    assert "ray imported: False" in tuned.stdout
    summary = SearchSummary.read(run_dir)
    assert summary.cluster is None
    assert len(summary.trials) == 2
    by_keras_tuner = keras_tuner_trials(run_dir)
    assert sorted(by_keras_tuner) == [trial.trial_id for trial in summary.trials]
    for trial in summary.trials:
        record = by_keras_tuner[trial.trial_id]
        assert record["status"] == "COMPLETED"
        assert trial.searched == recipe_values(record["hyperparameters"]["values"])
        assert trial.status == "completed"
        assert [row["training_iteration"] for row in trial.history] == [1, 2]
        assert set(trial.history[0]) == {
            "training_iteration", "phase", "val_accuracy", "val_loss", "loss"
        }  # fmt: skip
        # KerasTuner scored the trial on its best epoch, from the metrics the trial reported.
        best_epoch = max(row["val_accuracy"] for row in trial.history)
        assert record["score"] == pytest.approx(best_epoch)
        assert trial.val_accuracy == trial.history[-1]["val_accuracy"]
        assert Path(trial.path) == run_dir / "keras_tuner" / f"trial_{trial.trial_id}"
    assert f"best trial {summary.best_trial_id}" in tuned.stdout

    best_file = tmp_path / "best.json"
    assert main(["export", str(run_dir), "--out", str(best_file)]) == 0
    best = BestConfig.read(best_file)
    assert best.trial_id == summary.best_trial_id
    assert best.hyperparameters == summary.best.hyperparameters
    model_dir = tmp_path / "model"
    trained = ["train", "--config", str(best_file), "--data", str(shapes_data)]
    assert main([*trained, "--out", str(model_dir)]) == 0
    assert (model_dir / "model.keras").is_file()
    assert FinalMetrics.read(model_dir).epochs == best.epochs

    capsys.readouterr()
    assert main(["tune", "--resume", str(run_dir)]) == 2
    assert "--resume RUN_DIR): engine=keras-tuner cannot resume" in capsys.readouterr().err


def test_hyperband_continues_trials_from_their_saved_trainer(
    shapes_data: Path, tmp_path: Path
) -> None:
    # max_epochs 3, factor 3: three 1-epoch trials, the best continued to 3 epochs,
    # then two 3-epoch trials.
    config = small_config(tmp_path, kt_oracle="hyperband", max_epochs=3, num_samples=10)
    run_dir = tmp_path / "run"

    summary = run_search(config, shapes_data, run_dir, progress=False).summary

    by_keras_tuner = keras_tuner_trials(run_dir)
    assert len(summary.trials) == len(by_keras_tuner) == 6
    continued = [
        trial
        for trial in summary.trials
        if "tuner/trial_id" in by_keras_tuner[trial.trial_id]["hyperparameters"]["values"]
    ]
    assert len(continued) == 1
    child = continued[0]
    values = by_keras_tuner[child.trial_id]["hyperparameters"]["values"]
    assert (values["tuner/initial_epoch"], values["tuner/epochs"]) == (1, 3)
    parent = next(trial for trial in summary.trials if trial.trial_id == values["tuner/trial_id"])
    assert (parent.status, parent.epochs) == ("stopped_early", 1)
    assert (child.status, child.epochs) == ("completed", 3)
    assert child.searched == parent.searched
    assert [row["training_iteration"] for row in child.history] == [1, 2, 3]
    # The child's first epoch is the parent's, restored rather than trained again: the
    # saved trainer states hold the same epoch, timing included.
    states = {
        trial.trial_id: json.loads((Path(trial.path) / "trainer" / "state.json").read_text())
        for trial in (parent, child)
    }
    assert states[child.trial_id]["history"][0] == states[parent.trial_id]["history"][0]
    assert states[child.trial_id]["epoch"] == 3


# Bayesian: two random trials, then one from its Gaussian process. Hyperband (max_epochs
# 3): three random 1-epoch trials, then the best of them continued, chosen by their scores.
@pytest.mark.parametrize(
    ("oracle", "num_samples", "max_epochs"), [("bayesian", 3, 1), ("hyperband", 4, 3)]
)
def test_the_same_seed_gives_the_same_trials_in_the_same_order(
    oracle: str, num_samples: int, max_epochs: int, shapes_data: Path, tmp_path: Path
) -> None:
    def trials(seed: int, name: str) -> list[dict[str, Any]]:
        config = small_config(
            tmp_path,
            HEAD_ONLY_SPACE,
            kt_oracle=oracle,
            num_samples=num_samples,
            max_epochs=max_epochs,
            seed=seed,
        )
        summary = run_search(config, shapes_data, tmp_path / name, progress=False).summary
        return [trial.searched for trial in summary.trials]

    first = trials(5, "first")
    again = trials(5, "again")
    other = trials(6, "other")

    assert len(first) == num_samples
    assert again == first
    assert other != first


def test_time_budget_stops_starting_trials(shapes_data: Path, tmp_path: Path) -> None:
    config = small_config(
        tmp_path, HEAD_ONLY_SPACE, kt_oracle="random", num_samples=4, time_budget_s=0.001
    )

    summary = run_search(config, shapes_data, tmp_path / "run", progress=False).summary

    assert len(summary.trials) == 1
    assert len(keras_tuner_trials(tmp_path / "run")) == 1
