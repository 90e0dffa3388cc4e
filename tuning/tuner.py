"""Ray Tune's side of a search: the tuner, built new or restored, and what its trials left.

What decides (the Optuna sampler behind ``OptunaSearch``, and ASHA), what runs
(``recipe_trainable``) and what defines (the search space) stay separate, as in
KerasTuner's oracle / tuner / hypermodel split; this module puts them together.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.features import is_uri
from core.hyperparameters import Hyperparameters
from search_spaces import SearchSpace, to_optuna
from tuning.config import SearchConfig
from tuning.resume import fail_orphaned_study_trials, trials_in_saved_experiment
from tuning.run_dir import METRIC, MODE, STUDY_FILE, STUDY_NAME, TRIALS_DIR, TrialSummary
from tuning.trainable import TrialContext, recipe_trainable
from tuning.warm_start import WarmStart, seeded_trial_count

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = (
    "training_iteration",
    "phase",
    "cost",
    "val_accuracy",
    "val_loss",
    "loss",
)
"""The per-epoch metrics ``results.json`` keeps of each trial (``cost``: see ``core.cost``)."""

TIME_ATTRIBUTES = {"epochs": "training_iteration", "cost": "cost"}
"""``asha_time_attr`` -> the reported metric ASHA counts its time in."""


class TunerError(ValueError):
    """The tuner cannot be built as asked (the message says why and what to do)."""


def experiment_location(config: SearchConfig, run_dir: Path) -> str:
    """Where Ray Tune keeps a search's trials: ``RUN_DIR/trials``, or under ``storage_path``.

    On several nodes, every node must reach it: ``storage_path`` then names
    shared storage (NFS, EFS, a mounted volume) or a URI (``s3://``, ``gs://``).
    """
    return f"{_storage_root(config, run_dir)}/{_experiment_name(config, run_dir)}"


def refuse_existing_experiment(location: str) -> None:
    """Two runs must not share a Ray Tune experiment (under one storage_path, same name)."""
    if is_uri(location):
        import pyarrow.fs

        filesystem, path = pyarrow.fs.FileSystem.from_uri(location)
        exists = filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound
    else:
        exists = Path(location).exists()
    if exists:
        raise TunerError(
            f"{location} already holds a Ray Tune experiment (storage_path/run name); give "
            "the run directory another name, or --resume that run"
        )


def _storage_root(config: SearchConfig, run_dir: Path) -> str:
    storage_path = config.storage.storage_path
    if not storage_path:
        return str(run_dir)
    if is_uri(storage_path):
        return storage_path.rstrip("/")
    return str(Path(os.path.expanduser(storage_path)).absolute())


def _experiment_name(config: SearchConfig, run_dir: Path) -> str:
    """``trials`` inside the run directory; the run's own name under a shared storage_path."""
    return run_dir.name if config.storage.storage_path else TRIALS_DIR


def trial_name(trial: Any) -> str:
    """Short trial names and directories (Ray's default repeats every parameter)."""
    return f"trial_{trial.trial_id}"


def make_trainable(config: SearchConfig, shared_features: Any) -> Any:
    """The recipe trainable with the search's features and each trial's resources."""
    from ray import tune

    from cluster import share_with_trials

    resources = config.resources
    context = TrialContext(
        setup=config.training_setup(),
        cpus_per_trial=resources.cpus_per_trial,
        gpus_per_trial=resources.gpus_per_trial,
    )
    return tune.with_resources(
        share_with_trials(recipe_trainable, features=shared_features, context=context),
        {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial},
    )


Opening = Callable[["optuna.Study"], object]
"""What a new search does to its Optuna study before Tune asks for the first trial."""

FIRST_TRIAL_ATTR = "bottletune_first_trial"
"""User attribute of the trial that ``first_trial: plain`` enqueued."""


def opening(
    config: SearchConfig, space: SearchSpace, warm_start: WarmStart | None
) -> Opening | None:
    """How a new search's study starts: a warm start's trials, else a plain first trial.

    With ``first_trial: plain`` (the default) and a space where a trial can be
    plain (``SearchSpace.plain_values``), the first trial is enqueued with no
    augmentation and ``unfreeze_blocks`` 0; the sampler fills in the rest. It
    needs only the plain top cut, which is built first, so it trains as soon as
    that pass ends, while the views are still being built. A warm start's first trial (the
    earlier best) comes first instead. The search's dry run of its sampler
    (``tuning.samplers.first_suggestions``) does the same to its own study.

    Returns:
        A function of the new study, or None when the sampler chooses every trial.
    """
    if warm_start is not None:
        return warm_start.seed
    values = space.plain_values() if config.searcher.first_trial == "plain" else None
    if not values:
        return None

    def enqueue_plain(study: optuna.Study) -> None:
        if not study.trials:  # a study that holds trials has had its first
            study.enqueue_trial(dict(values), user_attrs={FIRST_TRIAL_ATTR: "plain"})

    return enqueue_plain


def open_study(storage: Any, study_name: str = STUDY_NAME) -> optuna.Study:
    """The search's study in ``storage``, created if missing."""
    import optuna

    return optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction="maximize" if MODE == "max" else "minimize",
        load_if_exists=True,
    )


def new_tuner(
    trainable: Any,
    config: SearchConfig,
    space: SearchSpace,
    run_dir: Path,
    *,
    sampler: Any,
    progress: bool,
    opening: Opening | None = None,
    reuse_actors: bool = True,
    stop: Any = None,
) -> Any:
    """A new Tuner: Optuna's sampler (its study in ``RUN_DIR/optuna.journal``) and ASHA.

    The searcher is ``ResumableOptunaSearch``, so that a search whose driver
    died while Tune saved it resumes (see ``tuning.resumable_search``).

    Args:
        opening: Done to the new study before the first trial (see ``opening``).
        stop: A Tune ``Stopper`` (e.g. ``cluster.build_watch.StopWhenBuildFails``).
    """
    from ray import tune

    from tuning.resumable_search import ResumableOptunaSearch

    storage = journal_storage(run_dir / STUDY_FILE)
    if opening is not None:
        # Not OptunaSearch's points_to_evaluate/evaluated_rewards: with a
        # define-by-run space its add_evaluated_point raises TypeError. The
        # study is seeded here instead, and the searcher loads it as it is.
        opening(open_study(storage))
    searcher = ResumableOptunaSearch(
        space=to_optuna(space),
        metric=METRIC,
        mode=MODE,
        sampler=sampler,
        storage=storage,
        study_name=STUDY_NAME,
    )
    scheduler = make_scheduler(config, space)
    _quiet_checkpoint_warning()
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            search_alg=searcher,
            scheduler=scheduler,
            # Later trials start in a process with TensorFlow loaded and
            # configured; each trial frees its models when it ends, so the
            # process's memory stays flat (tests/unit/test_trainable_startup.py).
            # Ray reuses a process only for a trial asking the same resources,
            # and a trial whose process died is retried in a new one.
            reuse_actors=reuse_actors,
            num_samples=config.schedule.num_samples,
            max_concurrent_trials=config.resources.max_concurrent_trials or None,
            time_budget_s=config.schedule.time_budget_s or None,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=_experiment_name(config, run_dir),
            storage_path=_storage_root(config, run_dir),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=config.schedule.max_failures),
            verbose=1 if progress else 0,
            stop=stop,
        ),
    )


def make_scheduler(config: SearchConfig, space: SearchSpace, costs: Any = None) -> Any:
    """ASHA, its time in epochs or in cost (``asha_time_attr``).

    In cost (head epochs, ``core.cost``), ``grace_period`` is still in epochs
    of a head-only trial, and ``max_t`` is the cost of the dearest trial the
    space allows run for ``max_epochs``, so that max_t itself never cuts a
    trial short; a trial ends at ``max_epochs`` either way.

    Args:
        costs: ``core.cost.EpochCosts`` (default: counted in a CPU-only
            subprocess, so that the driver does not start TensorFlow).
    """
    from ray.tune.schedulers import ASHAScheduler

    asha = config.asha
    max_t = config.schedule.max_epochs
    if asha.asha_time_attr == "cost" and max(space.unfreeze_block_values()) > 0:
        if costs is None:
            from core.cost import epoch_costs_elsewhere

            costs = epoch_costs_elsewhere(config.features.backbone, config.features.image_size)
        max_t = math.ceil(costs.max_cost(config.training_setup(), space.unfreeze_block_values()))
    return ASHAScheduler(
        time_attr=TIME_ATTRIBUTES[asha.asha_time_attr],
        max_t=max_t,
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
    )


def restore_tuner(trainable: Any, run_dir: Path, experiment: str) -> Any:
    """The Tuner of an interrupted search, as Ray Tune saved it.

    Tune restores trial states, checkpoints, the scheduler and the searcher
    (with the Optuna study) as saved; finished trials stay finished,
    unfinished and errored ones continue from their last checkpoint. Study
    trials asked for after that checkpoint are orphans, set apart first (see
    ``fail_orphaned_study_trials``).
    """
    from ray import tune

    saved_trials = trials_in_saved_experiment(experiment)
    if saved_trials is not None and (run_dir / STUDY_FILE).is_file():
        storage = journal_storage(run_dir / STUDY_FILE)
        # A warm start's earlier trials are the study's first, before any of Tune's.
        saved_trials += seeded_trial_count(storage, STUDY_NAME)
        fail_orphaned_study_trials(storage, STUDY_NAME, saved_trials)
    _quiet_checkpoint_warning()
    return tune.Tuner.restore(
        experiment, trainable=trainable, resume_unfinished=True, resume_errored=True
    )


def _quiet_checkpoint_warning() -> None:
    # Trials checkpoint every epoch, so Tune snapshots its state often; on
    # short epochs it warns about that each time. The snapshots are small.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def fit(tuner: Any) -> tuple[list[Any], float]:
    """Runs the search; returns Tune's result of every trial that started, and the seconds.

    When ``time_budget_s`` ends a search, Tune may keep a trial it created but
    never started, with no config and no metrics: it is left out, and counted.
    """
    started = time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - started
    results = [grid[i] for i in range(len(grid))]
    started_results = [result for result in results if result.config]
    if len(started_results) < len(results):
        logger.info(
            "%d trial(s) were created but never started before the search ended",
            len(results) - len(started_results),
        )
    return started_results, seconds


def summarize_trial(result: Any, max_epochs: int) -> TrialSummary:
    """One trial's summary from its Ray Tune ``Result``.

    A trial retried after its process or node died may report an epoch twice:
    Tune restores the newest checkpoint it had registered, which can be older
    than the newest report. Each epoch is kept once in the history, as the
    retry reported it (its weights are the ones training went on from).
    """
    metrics = result.metrics or {}
    accuracy = metrics.get(METRIC)
    if accuracy is not None and not math.isfinite(float(accuracy)):
        accuracy = None
    epochs = int(metrics.get("training_iteration", 0) or 0)
    history: list[dict[str, Any]] = []
    frame = result.metrics_dataframe
    if frame is not None and not frame.empty:
        columns = [c for c in HISTORY_COLUMNS if c in frame.columns]
        history = once_per_epoch(json.loads(frame[columns].to_json(orient="records")))
    if result.error is not None:
        status = "error"
    elif epochs >= max_epochs:
        status = "completed"
    else:
        status = "stopped_early"
    return TrialSummary(
        trial_id=metrics.get("trial_id") or Path(result.path).name,
        status=status,
        epochs=epochs,
        val_accuracy=float(accuracy) if accuracy is not None else None,
        val_loss=metrics.get("val_loss"),
        hyperparameters=Hyperparameters.from_mapping(result.config),
        searched={k: v for k, v in result.config.items() if k in Hyperparameters.names()},
        history=history,
        path=result.path,
        error=str(result.error) if result.error is not None else None,
    )


def once_per_epoch(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows by ``training_iteration``, each once: a later row for an epoch replaces an earlier."""
    by_epoch: dict[Any, dict[str, Any]] = {}
    for row in rows:
        by_epoch.pop(row.get("training_iteration"), None)
        by_epoch[row.get("training_iteration")] = row
    return sorted(by_epoch.values(), key=lambda row: row.get("training_iteration") or 0)


def journal_storage(path: Path) -> Any:
    """The Optuna storage of a run's study: a journal file that optuna-dashboard opens."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))
