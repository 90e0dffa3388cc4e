"""``bottletune report``: plots and a markdown page of a search, finished or still running.

A finished search is read from ``results.json``; a running one from what is on
disk so far: Ray Tune's ``result.json`` of each trial (one line per reported
epoch) under the experiment that ``search.json`` names. The Optuna study in
``optuna.journal`` gives the parameter importances and the accuracy by
parameter, drawn by Optuna's own matplotlib plots; the curves over time and
epochs are drawn here, since Optuna has none that marks where ASHA stopped a
trial or puts wall time on the axis.

``results.json`` keeps each trial's epochs but not when they happened, so the
wall-time plot always reads Ray Tune's ``timestamp`` (whole seconds) from the
trials' ``result.json``.

The run directory is only read: the report goes to ``RUN_DIR/report`` or
``--out``, and the journal is opened only when it exists (Optuna's journal
backend would create an empty one).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from core.features import is_uri
from core.hyperparameters import Hyperparameters
from tuning.config import load_config
from tuning.run_dir import (
    CONFIG_FILE,
    MANIFEST_FILE,
    METRIC,
    RESULTS_FILE,
    STUDY_FILE,
    STUDY_NAME,
    TRIALS_DIR,
    RunDirError,
    RunManifest,
    SearchSummary,
    TrialSummary,
)
from tuning.tuner import HISTORY_COLUMNS, journal_storage, once_per_epoch

__all__ = [
    "DEFAULT_REPORT_DIR",
    "FIGURES",
    "REPORT_FILE",
    "EpochPoint",
    "Report",
    "RunView",
    "format_summary",
    "ranked",
    "read_run",
    "write_report",
]

DEFAULT_REPORT_DIR = "report"
REPORT_FILE = "report.md"
RESULT_LINES = "result.json"
"""Ray Tune's per-trial file: one JSON object per reported epoch."""
ERROR_FILE = "error.txt"
"""What Ray Tune writes into a trial's folder when the trial fails."""
GROUPED_PARAMETERS = ("unfreeze_blocks", "augmentation")
TOP_TRIALS = 10
SUMMARY_TRIALS = 5
STATUS_STYLE = {
    "completed": ("tab:blue", "o"),
    "stopped_early": ("tab:orange", "X"),
    "running": ("tab:green", ">"),
    "error": ("tab:red", "s"),
}
"""Colour and marker of each trial status, in every plot."""


@dataclass(frozen=True)
class EpochPoint:
    """One epoch a trial reported, and when (Ray Tune's ``timestamp``)."""

    trial_id: str
    epoch: int
    val_accuracy: float | None
    wall_s: float
    """Seconds since the search started."""


@dataclass(frozen=True)
class RunView:
    """What a run directory says about its search, finished or not.

    Attributes:
        run_dir: The run directory.
        finished: Whether ``results.json`` exists (else read from the trials on disk).
        max_epochs: Epochs each trial was planned for.
        trials: Every trial; a running search's have status "running" until
            they end (last epoch, or Ray Tune's ``done`` where ASHA stopped them).
        points: Every epoch with a time, in time order (empty when no
            ``result.json`` could be read).
        started: What ``points`` count from: "search.json" (the search's start)
            or "first trial" (when the manifest has no start time).
        study: The Optuna study of ``optuna.journal`` (None when there is none).
        notes: What the report could not show, and why.
    """

    run_dir: Path
    finished: bool
    max_epochs: int
    trials: list[TrialSummary]
    points: list[EpochPoint]
    started: str
    study: Any
    notes: tuple[str, ...]

    @property
    def best(self) -> TrialSummary | None:
        """The best trial, by its last epoch (as ``results.json`` judges); None if none scored."""
        top = ranked(self.trials)
        return top[0] if top else None


def ranked(trials: Sequence[TrialSummary]) -> list[TrialSummary]:
    """Trials that reported, best first by their last epoch's accuracy; ties keep trial order."""
    scored = [trial for trial in trials if trial.val_accuracy is not None]
    return sorted(scored, key=lambda trial: -(trial.val_accuracy or 0.0))


# Reading a run directory


def read_run(run_dir: str | os.PathLike[str]) -> RunView:
    """Reads a search's run directory: ``results.json`` if finished, the trials on disk if not.

    Raises:
        RunDirError: when ``run_dir`` is not a run directory, or one of its
            files cannot be read (naming it).
    """
    run_dir = Path(run_dir).absolute()
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a directory (expected a bottletune run directory)")
    has_results = (run_dir / RESULTS_FILE).is_file()
    has_manifest = (run_dir / MANIFEST_FILE).is_file()
    if not has_results and not has_manifest:
        raise RunDirError(
            f"{run_dir} is not a bottletune run directory (it has neither {RESULTS_FILE} "
            f"nor {MANIFEST_FILE})"
        )
    manifest = RunManifest.read(run_dir) if has_manifest else None
    notes: list[str] = []
    if manifest is not None and not has_results:
        max_epochs = load_config(run_dir / CONFIG_FILE).schedule.max_epochs
        trials, lines = _running_trials(run_dir, manifest.experiment, max_epochs)
        if not trials:
            notes.append(f"no trial has started yet in {manifest.experiment}")
    else:
        summary = SearchSummary.read(run_dir)
        trials, max_epochs = summary.trials, summary.search.max_epochs
        lines = _finished_trial_lines(trials, run_dir, notes)
    points, started = _timeline(lines, manifest)
    study = _load_study(run_dir, notes)
    return RunView(
        run_dir=run_dir,
        finished=has_results,
        max_epochs=max_epochs,
        trials=trials,
        points=points,
        started=started,
        study=study,
        notes=tuple(notes),
    )


def _finished_trial_lines(
    trials: Sequence[TrialSummary], run_dir: Path, notes: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """Each finished trial's ``result.json`` lines, for the times ``results.json`` lacks.

    A trial's folder is where ``results.json`` says, else under ``RUN_DIR/trials``
    (a run directory copied elsewhere).
    """
    lines = {}
    for trial in trials:
        folders = [] if is_uri(trial.path) else [Path(trial.path)]
        folders.append(run_dir / TRIALS_DIR / Path(trial.path).name)
        found = next((f / RESULT_LINES for f in folders if (f / RESULT_LINES).is_file()), None)
        if found is not None:
            lines[trial.trial_id] = read_result_lines(found)
    missing = len(trials) - len(lines)
    if missing:
        notes.append(
            f"{missing} trial(s) have no readable {RESULT_LINES} (moved, or on remote "
            "storage): the plot over time leaves them out"
        )
    return lines


def read_result_lines(path: Path) -> list[dict[str, Any]]:
    """Ray Tune's ``result.json`` of one trial, one dict per line.

    A last line cut short (the trial is writing it) is left out.

    Raises:
        RunDirError: naming the file and line that is not JSON.
    """
    try:
        text = path.read_text()
    except OSError as error:
        raise RunDirError(f"{path}: cannot read Ray Tune's trial results ({error})") from error
    rows = []
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            if number == len(lines) and not text.endswith("\n"):
                break
            raise RunDirError(f"{path}:{number}: not a JSON line ({error})") from error
        if not isinstance(row, dict):
            raise RunDirError(f"{path}:{number}: expected a JSON object per line")
        rows.append(row)
    return rows


def _running_trials(
    run_dir: Path, experiment: str, max_epochs: int
) -> tuple[list[TrialSummary], dict[str, list[dict[str, Any]]]]:
    """The trials of a search still running, from their folders in Ray Tune's experiment."""
    if is_uri(experiment):
        raise RunDirError(
            f"{run_dir}: the search keeps its trials at {experiment}; a report of a running "
            "search reads local trial folders only (report it once results.json exists)"
        )
    folder = Path(experiment)
    if not folder.is_dir():
        return [], {}
    trials, lines = [], {}
    for trial_dir in sorted(folder.iterdir()):
        if not trial_dir.is_dir() or not trial_dir.name.startswith("trial_"):
            continue
        path = trial_dir / RESULT_LINES
        rows = read_result_lines(path) if path.is_file() else []
        trial = trial_from_lines(trial_dir, rows, max_epochs)
        trials.append(trial)
        lines[trial.trial_id] = rows
    # In the order the trials first reported; those yet to report last.
    trials.sort(key=lambda trial: _first_timestamp(lines[trial.trial_id]))
    return trials, lines


def _first_timestamp(rows: list[dict[str, Any]]) -> float:
    stamps = [float(row["timestamp"]) for row in rows if "timestamp" in row]
    return min(stamps) if stamps else math.inf


def trial_from_lines(trial_dir: Path, rows: list[dict[str, Any]], max_epochs: int) -> TrialSummary:
    """A trial's summary from Ray Tune's ``result.json`` lines, as ``summarize_trial`` makes it.

    Its status: "completed" once it reported ``max_epochs``; "stopped_early"
    when Tune marked its last report ``done`` before that (ASHA stopped it);
    "error" when Tune wrote ``error.txt`` after its last report; else "running".

    Raises:
        RunDirError: when a line's config holds an impossible hyperparameter.
    """
    path = trial_dir / RESULT_LINES
    epochs_rows = once_per_epoch(rows)
    last = epochs_rows[-1] if epochs_rows else {}
    epochs = int(last.get("training_iteration", 0) or 0)
    config = last.get("config") or {}
    try:
        hyperparameters = Hyperparameters.from_mapping(config)
    except ValueError as error:
        raise RunDirError(f"{path}: {error}") from error
    error_file = trial_dir / ERROR_FILE
    failure = None
    if epochs >= max_epochs:
        status = "completed"
    elif rows and rows[-1].get("done"):
        status = "stopped_early"
    elif error_file.is_file() and not _reported_since(path, error_file):
        # Tune keeps error.txt when it retries a trial (max_failures); a retry that has
        # reported since is running again.
        status, failure = "error", _last_line(error_file)
    else:
        status = "running"
    return TrialSummary(
        trial_id=str(last.get("trial_id") or trial_dir.name.removeprefix("trial_")),
        status=status,
        epochs=epochs,
        val_accuracy=_finite(last.get(METRIC)),
        val_loss=_finite(last.get("val_loss")),
        hyperparameters=hyperparameters,
        searched={k: v for k, v in config.items() if k in Hyperparameters.names()},
        history=[{c: row[c] for c in HISTORY_COLUMNS if c in row} for row in epochs_rows],
        path=str(trial_dir),
        error=failure,
    )


def _reported_since(results: Path, error_file: Path) -> bool:
    return results.is_file() and results.stat().st_mtime > error_file.stat().st_mtime


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), "failed")


def _finite(value: Any) -> float | None:
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def _timeline(
    lines: dict[str, list[dict[str, Any]]], manifest: RunManifest | None
) -> tuple[list[EpochPoint], str]:
    """Every epoch with its time, counted from the search's start (or the first trial's)."""
    origin = _manifest_start(manifest)
    started = "search.json"
    if origin is None:
        starts = [
            float(row["timestamp"]) - float(row.get("time_total_s", 0.0))
            for rows in lines.values()
            for row in rows[:1]
            if "timestamp" in row
        ]
        origin, started = (min(starts) if starts else 0.0), "first trial"
    points = [
        EpochPoint(
            trial_id=trial_id,
            epoch=int(row.get("training_iteration", 0) or 0),
            val_accuracy=_finite(row.get(METRIC)),
            wall_s=float(row["timestamp"]) - origin,
        )
        for trial_id, rows in lines.items()
        for row in once_per_epoch(rows)
        if "timestamp" in row
    ]
    return sorted(points, key=lambda point: point.wall_s), started


def _manifest_start(manifest: RunManifest | None) -> float | None:
    if manifest is None or not manifest.started:
        return None
    try:
        return datetime.strptime(manifest.started, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def _load_study(run_dir: Path, notes: list[str]) -> Any:
    """The run's Optuna study, read-only; None (with a note) when there is none."""
    path = run_dir / STUDY_FILE
    if not path.is_file():
        notes.append(f"no {STUDY_FILE} (a KerasTuner search has none): no parameter importances")
        return None
    import optuna

    from tuning.warm_start import seeded_trial_count

    storage = journal_storage(path)
    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    except (KeyError, ValueError) as error:
        raise RunDirError(
            f"{path}: cannot read the Optuna study {STUDY_NAME!r} ({error})"
        ) from error
    seeded = seeded_trial_count(storage, STUDY_NAME)
    if seeded:
        notes.append(
            f"the study was warm-started with {seeded} trial(s) of an earlier search: the "
            "parameter importances and the accuracy by parameter include them"
        )
    return study


# Plots


STYLE = "ggplot"
"""The style Optuna's matplotlib plots use; ours use it too, so the report reads as one."""


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> None:
    figure.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(figure)


def plot_best_so_far(view: RunView, path: Path) -> bool:
    """Best validation accuracy any trial reported so far, against wall time.

    Returns:
        Whether there was anything to draw (False: no file is written).
    """
    scored = [point for point in view.points if point.val_accuracy is not None]
    if not scored:
        return False
    plt = _pyplot()
    times = [point.wall_s for point in scored]
    values = [point.val_accuracy or 0.0 for point in scored]
    best = list(itertools.accumulate(values, max))
    status = {trial.trial_id: trial.status for trial in view.trials}
    last_points = {point.trial_id: point for point in scored}  # in time order: the last wins
    with plt.style.context(STYLE):
        figure, axes = plt.subplots(figsize=(9, 4.5))
        axes.scatter(times, values, s=12, color="0.55", label="an epoch of a trial", zorder=2)
        axes.step(times, best, where="post", color="tab:blue", linewidth=2, label="best so far")
        for name, (colour, marker) in STATUS_STYLE.items():
            ends = [p for p in last_points.values() if status.get(p.trial_id) == name]
            if ends:
                axes.scatter(
                    [p.wall_s for p in ends],
                    [p.val_accuracy for p in ends],
                    s=50,
                    color=colour,
                    marker=marker,
                    label=f"last epoch, {name.replace('_', ' ')}",
                    zorder=3,
                )
        since = "search started" if view.started == "search.json" else "first trial started"
        axes.set_xlim(left=0)  # what came before the first epoch (Ray, features) shows too
        axes.set_xlabel(f"seconds since the {since}")
        axes.set_ylabel(METRIC)
        axes.set_title("Best validation accuracy so far")
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        _save(figure, path)
    return True


def plot_learning_curves(view: RunView, path: Path) -> bool:
    """Each trial's validation accuracy per epoch; a mark where a trial ended early.

    Returns:
        Whether any trial reported an epoch.
    """
    curves = [(trial, _curve(trial)) for trial in view.trials]
    curves = [(trial, curve) for trial, curve in curves if curve[0]]
    if not curves:
        return False
    plt = _pyplot()
    best = view.best
    with plt.style.context(STYLE):
        figure, axes = plt.subplots(figsize=(9, 4.5))
        for trial, (epochs, values) in curves:
            colour, marker = STATUS_STYLE.get(trial.status, ("0.4", "o"))
            is_best = best is not None and trial.trial_id == best.trial_id
            width, alpha = (2.8, 1.0) if is_best else (1.2, 0.6)
            axes.plot(epochs, values, color=colour, alpha=alpha, linewidth=width)
            if trial.status != "completed":
                axes.scatter(epochs[-1:], values[-1:], color=colour, marker=marker, s=60, zorder=3)
            if is_best:
                axes.annotate(
                    f"best: {trial.trial_id}",
                    (epochs[-1], values[-1]),
                    textcoords="offset points",
                    xytext=(-8, 4),
                    ha="right",
                    fontsize="small",
                )
        switch = _fine_tuning_starts(view.trials)
        if switch is not None:
            axes.axvline(switch - 0.5, color="0.4", linestyle=":", linewidth=1.2)
            axes.text(
                switch - 0.45,
                0.97,
                "fine-tuning starts",
                transform=axes.get_xaxis_transform(),
                va="top",
                fontsize="small",
                color="0.3",
            )
        legend = [
            plt.Line2D(
                [],
                [],
                color=colour,
                marker=None if name == "completed" else marker,
                label=_STATUS_LABELS[name],
            )
            for name, (colour, marker) in STATUS_STYLE.items()
            if any(trial.status == name for trial, _ in curves)
        ]
        axes.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        axes.set_xlim(0.8, view.max_epochs + 0.2)
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.set_xlabel("epoch")
        axes.set_ylabel(METRIC)
        axes.set_title(f"Learning curves of {len(curves)} trials")
        _save(figure, path)
    return True


_STATUS_LABELS = {
    "completed": "completed",
    "stopped_early": "stopped early (ASHA)",
    "running": "still running",
    "error": "failed",
}


def _curve(trial: TrialSummary) -> tuple[list[int], list[float]]:
    rows = [row for row in trial.history if _finite(row.get(METRIC)) is not None]
    return [int(row["training_iteration"]) for row in rows], [float(row[METRIC]) for row in rows]


def _fine_tuning_starts(trials: Sequence[TrialSummary]) -> int | None:
    """The first epoch any trial spent in phase 2 (fine-tuning), from the histories."""
    epochs = [
        int(row["training_iteration"])
        for trial in trials
        for row in trial.history
        if row.get("phase") == 2 and "training_iteration" in row
    ]
    return min(epochs) if epochs else None


def _complete_study_trials(view: RunView) -> list[Any]:
    if view.study is None:
        return []
    import optuna

    return view.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def _optuna_plot(
    draw: Callable[[], Any],
    path: Path,
    size: tuple[float, float],
    notes: list[str],
    title: str = "",
) -> None:
    """Saves one of ``optuna.visualization.matplotlib``'s plots (they return Axes).

    Optuna sizes its figures by ``figure.figsize`` and sets its style
    globally; both stay inside this call. Its warnings (too few trials for an
    estimate) become notes of the report.
    """
    import matplotlib
    import optuna

    _pyplot()
    with (
        matplotlib.rc_context({"figure.figsize": size}),
        warnings.catch_warnings(record=True) as caught,
        _logger_level("matplotlib.category", logging.WARNING),
    ):
        warnings.simplefilter("always")
        axes = draw()
        panels = list(axes.ravel()) if hasattr(axes, "ravel") else [axes]
        for panel in panels:
            if panel.get_xlabel() == "unfreeze_blocks":
                panel.xaxis.get_major_locator().set_params(integer=True)
        if title and len(panels) == 1:
            panels[0].set_title(title)
        elif title:
            panels[0].figure.suptitle(title)
        _save(panels[0].figure, path)
    for warning in caught:
        note = f"Optuna: {warning.message}"
        if not issubclass(warning.category, optuna.exceptions.ExperimentalWarning):
            notes.extend([note] if note not in notes else [])


@contextlib.contextmanager
def _logger_level(name: str, level: int) -> Iterator[None]:
    """A logger's level for a while: Optuna's slice plot hands matplotlib categorical floats
    as strings, which matplotlib logs at INFO each time."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def plot_importances(view: RunView, path: Path, notes: list[str]) -> bool:
    """Optuna's parameter importances (its default evaluator) of the finished study trials."""
    finished = _complete_study_trials(view)
    if len(finished) < 2:
        if view.study is not None:
            notes.append(
                f"parameter importances need 2 finished trials in {STUDY_FILE}; "
                f"it has {len(finished)}"
            )
        return False
    from optuna.visualization.matplotlib import plot_param_importances

    try:
        _optuna_plot(
            lambda: plot_param_importances(view.study, target_name=METRIC), path, (8, 4.5), notes
        )
    except (ValueError, RuntimeError, ZeroDivisionError) as error:
        notes.append(f"Optuna could not evaluate parameter importances: {error}")
        return False
    return True


def plot_by_parameter(view: RunView, path: Path, notes: list[str]) -> bool:
    """Optuna's slice plot of validation accuracy by ``unfreeze_blocks`` and ``augmentation``."""
    finished = _complete_study_trials(view)
    searched = {name for trial in finished for name in trial.params}
    params = [name for name in GROUPED_PARAMETERS if name in searched]
    for name in GROUPED_PARAMETERS:
        if name not in params and finished:
            notes.append(f"{name} is not searched in this run: no plot of accuracy by it")
    if not params:
        return False
    from optuna.visualization.matplotlib import plot_slice

    _optuna_plot(
        lambda: plot_slice(view.study, params=params, target_name=METRIC),
        path,
        (5.0 * len(params), 4.5),
        notes,
        title=f"{METRIC} by {' and '.join(sorted(params))}",  # Optuna's panel order
    )
    return True


# The report


FIGURES: dict[str, tuple[str, str]] = {
    "best_so_far.png": (
        "Best validation accuracy so far",
        "Every epoch any trial reported (grey) and the best so far (blue), over wall time "
        "(Ray Tune's `timestamp` in each trial's `result.json`, whole seconds). Large marks: "
        "each trial's last epoch, by status. The ranking below judges a trial by its last "
        "epoch, as `results.json` does; the line counts every epoch.",
    ),
    "learning_curves.png": (
        "Learning curves",
        "`val_accuracy` per epoch of every trial; a mark at the end of each trial that did "
        "not complete (stopped early by ASHA, still running, or failed). The thick line is "
        "the best trial.",
    ),
    "param_importances.png": (
        "Parameter importances",
        f"Optuna's importance evaluator over the finished trials of `{STUDY_FILE}`.",
    ),
    "by_parameter.png": (
        "Validation accuracy by unfreeze_blocks and augmentation",
        f"Optuna's slice plot: each finished trial's value in `{STUDY_FILE}` (its last "
        "epoch's accuracy), coloured by trial number.",
    ),
}
"""Each figure's file name, heading and caption, in report order."""


@dataclass(frozen=True)
class Report:
    """What ``write_report`` wrote, and what it read."""

    view: RunView
    out_dir: Path
    markdown: Path
    figures: list[Path]
    notes: tuple[str, ...]


def write_report(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> Report:
    """Writes the plots and ``report.md`` of a search, finished or still running.

    Args:
        run_dir: The search's run directory.
        out: Folder for the report (default: ``RUN_DIR/report``); files of an
            earlier report there are replaced.

    Raises:
        RunDirError: when ``run_dir`` is not a run directory or ``out`` is a file.
    """
    view = read_run(run_dir)
    out_dir = Path(out).absolute() if out is not None else view.run_dir / DEFAULT_REPORT_DIR
    if out_dir.exists() and not out_dir.is_dir():
        raise RunDirError(f"--out {out_dir} is a file; give a folder for the report")
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = list(view.notes)
    drawn = {
        "best_so_far.png": plot_best_so_far(view, out_dir / "best_so_far.png"),
        "learning_curves.png": plot_learning_curves(view, out_dir / "learning_curves.png"),
        "param_importances.png": plot_importances(view, out_dir / "param_importances.png", notes),
        "by_parameter.png": plot_by_parameter(view, out_dir / "by_parameter.png", notes),
    }
    for name, written in drawn.items():
        if not written:
            (out_dir / name).unlink(missing_ok=True)  # an earlier report's, now out of date
    figures = [out_dir / name for name, written in drawn.items() if written]
    markdown = out_dir / REPORT_FILE
    staging = markdown.with_name(f".{REPORT_FILE}.tmp")
    staging.write_text(render_markdown(view, [path.name for path in figures], notes))
    staging.replace(markdown)
    return Report(view, out_dir, markdown, figures, tuple(notes))


def render_markdown(view: RunView, figures: Sequence[str], notes: Sequence[str]) -> str:
    """``report.md``: the state of the search, each figure, the top trials and the notes."""
    state = (
        f"finished (`{RESULTS_FILE}`)"
        if view.finished
        else f"still running (read from the trials' `{RESULT_LINES}` on disk)"
    )
    lines = [
        f"# Search report: {view.run_dir.name}",
        "",
        f"- Run directory: `{view.run_dir}`",
        f"- Search: {state}",
        f"- Trials: {_status_counts(view.trials)}",
    ]
    best = view.best
    if best is not None:
        lines.append(
            f"- Best trial: `{best.trial_id}`, {METRIC} {best.val_accuracy:.4f} after "
            f"{best.epochs} of {view.max_epochs} epochs ({best.status})"
        )
    for name in figures:
        heading, caption = FIGURES[name]
        lines += ["", f"## {heading}", "", f"![{heading}]({name})", "", caption]
    lines += ["", f"## Top trials (by {METRIC} of their last epoch)", ""]
    lines += _trials_table(ranked(view.trials)[:TOP_TRIALS]) or ["No trial has reported yet."]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _status_counts(trials: Sequence[TrialSummary]) -> str:
    counts = Counter(trial.status for trial in trials)
    parts = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    return f"{len(trials)}" + (f" ({parts})" if parts else "")


def _searched_names(trials: Sequence[TrialSummary]) -> list[str]:
    """The searched hyperparameters, in ``Hyperparameters``' field order."""
    seen = {name for trial in trials for name in trial.searched}
    return [name for name in Hyperparameters.names() if name in seen]


def _trials_table(trials: Sequence[TrialSummary]) -> list[str]:
    if not trials:
        return []
    names = _searched_names(trials)
    header = ["rank", "trial", "status", "epochs", METRIC, *names]
    rows = [
        [
            str(rank),
            f"`{trial.trial_id}`",
            trial.status,
            str(trial.epochs),
            f"{trial.val_accuracy:.4f}",
            *(_value(trial.searched.get(name)) for name in names),
        ]
        for rank, trial in enumerate(trials, start=1)
    ]
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _value(value: Any) -> str:
    """A hyperparameter for a table: 4 significant digits; "-" where a condition left it out."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_summary(report: Report) -> str:
    """One screen for the console: trials by status, the best trial, the top 5, the files."""
    view = report.view
    state = "finished" if view.finished else "still running: read from the trials on disk"
    lines = [f"run: {view.run_dir} ({state})", f"trials: {_status_counts(view.trials)}"]
    best = view.best
    if best is None:
        lines.append("best: no trial has reported an epoch yet")
    else:
        lines.append(
            f"best: trial {best.trial_id} {METRIC}={best.val_accuracy:.4f} after "
            f"{best.epochs} epochs ({best.status})"
        )
        lines.append(f"  hyperparameters: {json.dumps(best.searched, sort_keys=True)}")
        lines.append(f"top {SUMMARY_TRIALS}:")
        for rank, trial in enumerate(ranked(view.trials)[:SUMMARY_TRIALS], start=1):
            values = " ".join(
                f"{name}={_value(trial.searched.get(name))}"
                for name in _searched_names(view.trials)
                if name in trial.searched
            )
            lines.append(
                f"  {rank}. {trial.trial_id}  {trial.val_accuracy:.4f}  "
                f"{trial.epochs} ep  {trial.status:<13}  {values}"
            )
    plots = ", ".join(path.name for path in report.figures) or "none"
    lines.append(f"report: {report.markdown} (plots: {plots})")
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)
