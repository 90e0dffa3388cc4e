"""Continuing a search whose driver died: what a run directory records, and whether it fits.

A search writes ``search.json`` into its run directory before the first trial
starts: the data it runs on (path and fingerprint) and the search space. Ray
Tune keeps the rest (trial states, checkpoints, the searcher's state) under
``trials/``. ``bottletune tune --resume RUN_DIR`` reads both back, refuses to
go on against other data or another space unless forced, and lets Ray Tune
continue the experiment: finished trials stay finished, unfinished ones resume
from their last checkpoint.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.features import is_uri
from search_spaces import SearchSpace, space_from_mapping
from tuning.config import RUNTIME_KEYS, SearchConfig, load_config
from tuning.run_dir import CONFIG_FILE, MANIFEST_FILE, RunDirError, RunManifest

logger = logging.getLogger(__name__)


class ResumeError(ValueError):
    """A run directory cannot be resumed as asked (the message says why and what to do)."""


@dataclass(frozen=True)
class SavedRun:
    """What a run directory says about the search that started there."""

    run_dir: Path
    config: SearchConfig
    space: SearchSpace
    data_path: str
    fingerprint: str
    experiment: str


def load_run(run_dir: str | Path, config_file: str = CONFIG_FILE) -> SavedRun:
    """Reads a run directory back for ``--resume``.

    Raises:
        ResumeError: naming the directory and the missing or unreadable file.
    """
    run_dir = Path(run_dir).absolute()
    if not (run_dir / MANIFEST_FILE).is_file():
        raise ResumeError(
            f"{run_dir} is not a bottletune run directory that can be resumed (no {MANIFEST_FILE})"
        )
    try:
        manifest = RunManifest.read(run_dir)
        space = space_from_mapping(manifest.space, source=str(run_dir / MANIFEST_FILE))
    except (RunDirError, ValueError) as error:
        raise ResumeError(f"{run_dir / MANIFEST_FILE}: {error}") from error
    data_path, fingerprint = manifest.dataset.path, manifest.dataset.fingerprint
    experiment = manifest.experiment
    if not is_uri(experiment) and not Path(experiment).is_dir():
        raise ResumeError(
            f"{run_dir}: the search never started its trials ({experiment} does not exist); "
            "start it again in a new directory"
        )
    config = load_config(run_dir / config_file)
    return SavedRun(run_dir, config, space, data_path, fingerprint, experiment)


def check_resume(
    saved: SavedRun,
    *,
    config: SearchConfig | None,
    space: SearchSpace | None,
    fingerprint: str,
    data_path: str | Path,
    force: bool,
) -> None:
    """Refuses to resume against other data, another space or another config, unless forced.

    Args:
        saved: The run as it started.
        config: The config the user asks to resume with (None: the saved one).
        space: The space that config names now (None: the saved one).
        fingerprint: Fingerprint of the data the resumed search would use.
        data_path: That data's path, for the message.
        force: Go on anyway, with a warning for each difference.

    Raises:
        ResumeError: naming each difference and ``--force``.
    """
    problems: list[str] = []
    if fingerprint != saved.fingerprint:
        problems.append(
            f"the data at {data_path} (fingerprint {fingerprint[:12]}) is not the data the "
            f"search started on ({saved.data_path}, fingerprint {saved.fingerprint[:12]})"
        )
    if space is not None and space.to_dict() != saved.space.to_dict():
        changed = sorted(
            name
            for name in set(space.to_dict()) | set(saved.space.to_dict())
            if space.to_dict().get(name) != saved.space.to_dict().get(name)
        )
        problems.append(
            f"the search space differs from the one the search started with "
            f"(parameters {', '.join(changed)})"
        )
    if config is not None:
        old, new = saved.config.to_dict(), config.to_dict()
        changed = sorted(k for k in old if k not in RUNTIME_KEYS and old[k] != new.get(k))
        if changed:
            problems.append(
                "the config differs in "
                + ", ".join(f"{k} ({old[k]!r} -> {new.get(k)!r})" for k in changed)
            )
    if not problems:
        return
    if not force:
        raise ResumeError(
            f"cannot resume {saved.run_dir}: "
            + "; ".join(problems)
            + ". Resume with the original data and config, or pass --force to go on anyway."
        )
    for problem in problems:
        logger.warning("resuming %s although %s (--force)", saved.run_dir, problem)
    if space is not None and space.to_dict() != saved.space.to_dict():
        logger.warning(
            "the resumed searcher keeps proposing from the space the search started with; "
            "start a new search to search the new space"
        )


ORPHAN_ATTR = "bottletune_orphaned"
"""User attribute on an Optuna trial that an interrupted driver asked for but Tune never saved."""
ORPHANS_STUDY_ATTR = "bottletune_orphans"
"""Study user attribute: the numbers of every such trial, whatever state it ended in."""


def trials_in_saved_experiment(experiment: str) -> int | None:
    """How many trials Ray Tune's newest saved experiment state holds (None if unknown).

    Read as plain JSON (``experiment_state-<time>.json``), the file Tune
    restores from: nothing is unpickled here. The file is Tune's own; when it
    has no ``trial_data`` list, this says so and returns None.
    """
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(_as_uri(experiment))
    selector = pyarrow.fs.FileSelector(root, allow_not_found=True)
    states = sorted(
        info.path
        for info in filesystem.get_file_info(selector)
        if info.base_name.startswith("experiment_state-") and info.base_name.endswith(".json")
    )
    if not states:
        return None
    with filesystem.open_input_stream(states[-1]) as stream:
        state = json.loads(stream.readall())
    trials = state.get("trial_data") if isinstance(state, dict) else None
    if not isinstance(trials, list):
        logger.warning(
            "%s has no trial_data list (another Ray Tune version?); the Optuna study is "
            "resumed as it is",
            states[-1],
        )
        return None
    return len(trials)


def fail_orphaned_study_trials(storage: Any, study_name: str, saved_trials: int) -> list[int]:
    """Sets apart the study's trials that Ray Tune will never report to.

    Tune restores the searcher as it was at its last experiment checkpoint,
    which held ``saved_trials`` trials: the study's first ``saved_trials``
    trials, not counting orphans set apart by an earlier resume. A driver killed
    after that checkpoint had already asked the study for more; Tune starts
    those trials again as new ones. Every such orphan is listed in the study's
    ``bottletune_orphans`` attribute (so later resumes count right, whatever
    state it ended in), and one still RUNNING is marked FAIL with the trial
    attribute ``bottletune_orphaned``, as Optuna's heartbeat marks the trials
    of a dead worker.

    Args:
        storage: The study's Optuna storage (the run's journal).
        study_name: The study's name.
        saved_trials: Trials in Tune's newest saved experiment state.

    Returns:
        The numbers of the trials newly set apart.
    """
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    study_id = storage.get_study_id_from_name(study_name)
    known_orphans = set(study.user_attrs.get(ORPHANS_STUDY_ATTR, []))
    counted = 0
    orphans = []
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if trial.number in known_orphans:
            continue
        if counted < saved_trials:
            counted += 1
        else:
            orphans.append(trial)
    if not orphans:
        return []
    storage.set_study_user_attr(
        study_id, ORPHANS_STUDY_ATTR, sorted(known_orphans | {t.number for t in orphans})
    )
    for trial in orphans:
        if trial.state == optuna.trial.TrialState.RUNNING:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            storage.set_trial_user_attr(trial_id, ORPHAN_ATTR, True)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    logger.warning(
        "Optuna trials %s were asked for after Ray Tune's last checkpoint of the "
        "interrupted search; Tune runs them again as new trials, so these are set apart "
        "(study attribute %s; the running ones marked failed)",
        [trial.number for trial in orphans],
        ORPHANS_STUDY_ATTR,
    )
    return [trial.number for trial in orphans]


def _as_uri(location: str) -> str:
    return location if is_uri(location) else Path(location).absolute().as_uri()
