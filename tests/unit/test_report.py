"""Unit tests for tuning.report: plots and report.md of a finished and of a running search.

The run directories are built from the real record types (SearchSummary,
TrialSummary, RunManifest, the written config) and a real Optuna study in a
journal file, whose trials ran a toy objective over the run's parameter names.
Each trial's Ray Tune ``result.json`` is written line by line as Tune writes it
(one JSON object per epoch, with ``timestamp``, ``time_total_s``, ``done``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from core.hyperparameters import Hyperparameters
from tuning.config import load_config, write_config
from tuning.report import (
    DEFAULT_REPORT_DIR,
    FIGURES,
    REPORT_FILE,
    format_summary,
    read_result_lines,
    read_run,
    write_report,
)
from tuning.run_dir import (
    CONFIG_FILE,
    STUDY_FILE,
    STUDY_NAME,
    TRIALS_DIR,
    CacheSummary,
    DatasetRef,
    DatasetSummary,
    RunDirError,
    RunManifest,
    SearchSettings,
    SearchSummary,
    TrialSummary,
)
from tuning.tuner import journal_storage

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_EPOCHS = 4
HEAD_EPOCHS = 1
STARTED = "2026-11-30T10:00:00+0000"
# ASHA stops these trials (by their order in the study) after 2 epochs.
STOPPED = {1, 4, 6}


def toy_objective(trial: Any) -> float:
    """A deterministic accuracy of the run's parameters (distinct values for distinct trials)."""
    unfreeze = trial.suggest_int("unfreeze_blocks", 0, 2)
    augmentation = trial.suggest_categorical("augmentation", [0.0, 0.5])
    dropout = trial.suggest_float("dropout", 0.0, 0.6)
    trial.suggest_float("l2", 1e-6, 1e-3, log=True)
    return 0.45 + 0.12 * unfreeze - 0.1 * augmentation + 0.2 * dropout


@dataclass(frozen=True)
class ToyTrial:
    """A trial of the toy study, as Ray Tune would have run it."""

    trial_id: str
    config: dict[str, Any]
    values: list[float]  # val_accuracy per epoch reported
    status: str
    start: float  # unix time of its start


def epoch_values(final: float, epochs: int) -> list[float]:
    """A rising curve that ends at ``final`` (the study's value is the last epoch's)."""
    return [round(final - 0.05 * (epochs - epoch), 6) for epoch in range(1, epochs + 1)]


def toy_trials(run_dir: Path, *, running: bool) -> list[ToyTrial]:
    """Runs the toy study into RUN_DIR/optuna.journal; returns its trials in Ray's terms.

    With ``running``, two more trials are asked for and left as a running
    search leaves them: one reported 2 epochs and goes on, one failed.
    """
    import optuna

    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=journal_storage(run_dir / STUDY_FILE),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=4),
    )
    study.optimize(toy_objective, n_trials=8)
    origin = datetime.strptime(STARTED, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    trials = []
    for frozen in study.trials:
        stopped = frozen.number in STOPPED
        epochs = 2 if stopped else MAX_EPOCHS
        trials.append(
            ToyTrial(
                trial_id=f"t{frozen.number:04d}",
                config=dict(frozen.params),
                values=epoch_values(float(frozen.value or 0.0), epochs),
                status="stopped_early" if stopped else "completed",
                start=origin + 30 + 7 * frozen.number,
            )
        )
    if running:
        for status, epochs in (("running", 2), ("error", 1)):
            trial = study.ask()
            toy_objective(trial)
            if status == "error":
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            trials.append(
                ToyTrial(
                    trial_id=f"t{trial.number:04d}",
                    config=dict(trial.params),
                    values=epoch_values(0.5, epochs),
                    status=status,
                    start=origin + 30 + 7 * trial.number,
                )
            )
    return trials


def result_lines(trial: ToyTrial) -> list[dict[str, Any]]:
    """The trial's result.json as Ray Tune writes it (``done`` on the report ASHA stops at)."""
    ended = trial.status in ("completed", "stopped_early")
    return [
        {
            "val_accuracy": value,
            "val_loss": 1.0 - value,
            "loss": 1.1 - value,
            "phase": 1 if epoch <= HEAD_EPOCHS else 2,
            "timestamp": int(trial.start + 2 * epoch),
            "done": ended and epoch == len(trial.values),
            "training_iteration": epoch,
            "trial_id": trial.trial_id,
            "time_this_iter_s": 2.0,
            "time_total_s": 2.0 * epoch,
            "config": trial.config,
        }
        for epoch, value in enumerate(trial.values, start=1)
    ]


def trial_summary(trial: ToyTrial, trial_dir: Path) -> TrialSummary:
    lines = result_lines(trial)
    return TrialSummary(
        trial_id=trial.trial_id,
        status=trial.status,
        epochs=len(trial.values),
        val_accuracy=trial.values[-1],
        val_loss=lines[-1]["val_loss"],
        hyperparameters=Hyperparameters.from_mapping(trial.config),
        searched=trial.config,
        history=[
            {
                k: line[k]
                for k in ("training_iteration", "phase", "val_accuracy", "val_loss", "loss")
            }
            for line in lines
        ],
        path=str(trial_dir),
    )


def build_run(run_dir: Path, *, finished: bool) -> list[ToyTrial]:
    """A run directory as a search leaves it: finished (results.json) or still running."""
    run_dir.mkdir(parents=True)
    config = load_config(overrides={"max_epochs": MAX_EPOCHS, "head_epochs": HEAD_EPOCHS})
    write_config(config, run_dir / CONFIG_FILE)
    RunManifest(
        dataset=DatasetRef("/data/shapes", "f1ngerpr1nt"),
        space={},
        experiment=str(run_dir / TRIALS_DIR),
        started=STARTED,
    ).write(run_dir)
    trials = toy_trials(run_dir, running=not finished)
    for trial in trials:
        trial_dir = run_dir / TRIALS_DIR / f"trial_{trial.trial_id}"
        trial_dir.mkdir(parents=True)
        lines = result_lines(trial)
        (trial_dir / "result.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
        if trial.status == "error":
            (trial_dir / "error.txt").write_text("Traceback ...\nRuntimeError: out of memory\n")
    if finished:
        best = max(trials, key=lambda trial: trial.values[-1])
        SearchSummary(
            metric="val_accuracy",
            mode="max",
            seconds=120.0,
            dataset=DatasetSummary("/data/shapes", "f1ngerpr1nt", "keras", ("a", "b"), {}),
            search=SearchSettings(
                backbone="vgg16",
                weights="none",
                weights_identity="none",
                image_size=32,
                seed=0,
                head_epochs=HEAD_EPOCHS,
                max_epochs=MAX_EPOCHS,
                validation_fraction=0.2,
            ),
            cache=CacheSummary(dir="/cache"),
            best_trial_id=best.trial_id,
            trials=[
                trial_summary(trial, run_dir / TRIALS_DIR / f"trial_{trial.trial_id}")
                for trial in trials
            ],
        ).write(run_dir)
    return trials


def assert_real_png(path: Path) -> None:
    """A decodable PNG of a readable size that shows more than a blank canvas."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= 400 and height >= 300, (path.name, image.size)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 50, path.name


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ToyTrial]]:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    return run_dir, build_run(run_dir, finished=True)


def test_report_of_a_finished_search_has_every_plot_and_the_top_trials(
    finished_run: tuple[Path, list[ToyTrial]],
) -> None:
    run_dir, trials = finished_run

    report = write_report(run_dir)

    out = run_dir / DEFAULT_REPORT_DIR
    assert report.markdown == out / REPORT_FILE
    assert [path.name for path in report.figures] == list(FIGURES)
    markdown = report.markdown.read_text()
    for path in report.figures:
        assert path.parent == out
        assert_real_png(path)
        assert f"]({path.name})" in markdown
    assert "finished" in markdown
    # The table: trials ranked by their last epoch, each with its hyperparameters.
    by_value = sorted(trials, key=lambda trial: -trial.values[-1])
    table = [line for line in markdown.splitlines() if line.startswith("| ") and "`t" in line]
    assert [row.split("|")[2].strip(" `") for row in table] == [t.trial_id for t in by_value]
    best = by_value[0]
    assert f"| {best.config['unfreeze_blocks']} |" in table[0]
    assert f"{best.config['dropout']:.4g}" in table[0]
    assert "| stopped_early |" in markdown
    summary = format_summary(report)
    completed = len(trials) - len(STOPPED)
    assert f"trials: {len(trials)} ({completed} completed, {len(STOPPED)} stopped_early)" in summary
    assert f"best: trial {best.trial_id} val_accuracy={best.values[-1]:.4f}" in summary
    top = [line for line in summary.splitlines() if line.startswith("  ") and ". t" in line]
    assert [line.split()[1] for line in top] == [t.trial_id for t in by_value[:5]]
    assert str(report.markdown) in summary


def test_wall_time_comes_from_the_trials_result_json(
    finished_run: tuple[Path, list[ToyTrial]],
) -> None:
    run_dir, trials = finished_run
    origin = datetime.strptime(STARTED, "%Y-%m-%dT%H:%M:%S%z").timestamp()

    view = read_run(run_dir)

    assert view.finished and view.started == "search.json"
    expected = sorted(
        (int(trial.start + 2 * epoch) - origin, trial.trial_id, epoch)
        for trial in trials
        for epoch in range(1, len(trial.values) + 1)
    )
    assert sorted((p.wall_s, p.trial_id, p.epoch) for p in view.points) == expected
    assert [p.wall_s for p in view.points] == sorted(p.wall_s for p in view.points)
    assert view.best is not None
    assert view.best.trial_id == SearchSummary.read(run_dir).best_trial_id


def test_report_of_a_running_search_reads_the_trials_on_disk(tmp_path: Path) -> None:
    import optuna

    run_dir = tmp_path / "run"
    trials = build_run(run_dir, finished=False)
    out = tmp_path / "elsewhere"

    report = write_report(run_dir, out)

    view = report.view
    assert not view.finished and not (run_dir / "results.json").exists()
    statuses = {trial.trial_id: trial.status for trial in view.trials}
    assert statuses == {trial.trial_id: trial.status for trial in trials}
    running = next(t for t in view.trials if t.status == "running")
    assert running.epochs == 2 and running.val_accuracy == 0.5
    failed = next(t for t in view.trials if t.status == "error")
    assert failed.error == "RuntimeError: out of memory"
    for trial, toy in zip(view.trials, trials, strict=True):
        assert trial.trial_id == toy.trial_id  # in the order they first reported
        assert [row["val_accuracy"] for row in trial.history] == toy.values
        assert trial.searched == toy.config
    # The study still holds the running trial: only finished ones weigh in.
    states = {t.state for t in view.study.trials}
    assert optuna.trial.TrialState.RUNNING in states
    assert sorted(path.name for path in out.iterdir()) == sorted([*FIGURES, REPORT_FILE])
    for path in report.figures:
        assert_real_png(path)
    markdown = report.markdown.read_text()
    assert "still running" in markdown
    assert "1 running" in markdown and "1 error" in markdown
    assert "still running" in format_summary(report)


def test_a_report_without_a_study_drops_the_optuna_plots_and_says_why(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    build_run(run_dir, finished=True)
    first = write_report(run_dir)
    assert (first.out_dir / "param_importances.png").is_file()

    (run_dir / STUDY_FILE).unlink()
    second = write_report(run_dir)

    assert [path.name for path in second.figures] == ["best_so_far.png", "learning_curves.png"]
    assert not (second.out_dir / "param_importances.png").exists(), "a stale plot was kept"
    assert not (second.out_dir / "by_parameter.png").exists()
    markdown = second.markdown.read_text()
    assert "param_importances.png" not in markdown
    assert f"no {STUDY_FILE}" in markdown
    assert not (run_dir / STUDY_FILE).exists(), "the report created an empty journal"


def test_a_folder_that_is_not_a_run_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")

    with pytest.raises(RunDirError, match=f"{tmp_path} is not a bottletune run directory"):
        write_report(tmp_path)
    with pytest.raises(RunDirError, match="missing-run is not a directory"):
        write_report(tmp_path / "missing-run")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


def test_result_lines_skip_a_line_being_written_but_not_a_damaged_one(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    whole = json.dumps({"training_iteration": 1, "val_accuracy": 0.5})
    path.write_text(whole + "\n" + '{"training_iteration": 2, "val_')

    assert read_result_lines(path) == [json.loads(whole)]

    path.write_text(whole + "\n{damaged\n" + whole + "\n")
    with pytest.raises(RunDirError, match=r"result\.json:2: not a JSON line"):
        read_result_lines(path)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_report_prints_the_summary_and_a_one_line_error(
    finished_run: tuple[Path, list[ToyTrial]], tmp_path: Path
) -> None:
    run_dir, trials = finished_run
    best = max(trials, key=lambda trial: trial.values[-1])

    result = run_cli("report", str(run_dir), "--out", str(tmp_path / "out"))

    assert result.returncode == 0, result.stderr
    assert f"best: trial {best.trial_id}" in result.stdout
    assert f"report: {tmp_path / 'out' / REPORT_FILE}" in result.stdout
    assert (tmp_path / "out" / REPORT_FILE).is_file()

    refused = run_cli("report", str(tmp_path / "out"))
    assert refused.returncode == 2
    errors = [line for line in refused.stderr.splitlines() if line.strip()]
    assert errors == [
        f"bottletune report: error: {tmp_path / 'out'} is not a bottletune run directory "
        "(it has neither results.json nor search.json)"
    ]


def test_a_warm_started_study_is_noted(tmp_path: Path) -> None:
    import optuna

    from tuning.warm_start import SEEDED_ATTR, SEEDED_COUNT_ATTR

    run_dir = tmp_path / "run"
    build_run(run_dir, finished=True)
    assert not [note for note in read_run(run_dir).notes if "warm-started" in note]
    study = optuna.load_study(study_name=STUDY_NAME, storage=journal_storage(run_dir / STUDY_FILE))
    study.set_user_attr(SEEDED_COUNT_ATTR, 3)
    study.set_user_attr(SEEDED_ATTR, str(tmp_path / "earlier"))

    notes = read_run(run_dir).notes

    assert [note for note in notes if "warm-started with 3 trial(s)" in note]
