"""KerasTuner as a second search engine: its oracles decide, the recipe's trainer runs.

``engine=keras-tuner`` runs the same search space through the same trainer
(``core.training.RecipeTrainer``) on the same feature cache as the Ray engine,
but on this machine alone, one trial at a time, in this process, without Ray.
KerasTuner's split stays visible:

- what decides: KerasTuner's own oracle (``kt_oracle``: hyperband, bayesian or
  random), objective ``val_accuracy``, max;
- what runs: ``RecipeTuner``, a ``BaseTuner`` whose ``run_trial`` trains the
  recipe on cached features (never a model on images) and returns each epoch's
  metrics to the oracle as a Keras ``History``, as KerasTuner's own ``Tuner`` does;
- what defines: the search space, declared on KerasTuner's ``HyperParameters``
  by ``search_spaces.to_keras_tuner`` (conditions as conditional scopes).

Hyperband's trials that continue another (``tuner/trial_id``) restore its
trainer, saved with ``RecipeTrainer.save``, and train from
``tuner/initial_epoch`` to ``tuner/epochs``, as KerasTuner does with weights.

The run directory is the Ray engine's (``tuning.run_dir``), so ``export`` and
``train`` read it alike; KerasTuner's project lives in ``RUN_DIR/keras_tuner``.
What the Ray engine does and this one cannot (clusters, ASHA, Optuna samplers,
resume, parallel trials) is refused up front, naming the key or flag.

Importing this module imports neither KerasTuner nor TensorFlow (nor Ray, ever):
the checks run first, and fast.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import time
from pathlib import Path
from typing import Any

from core.backbones import get_backbone
from core.data import load_images, scan_dataset
from core.features import FeatureBundle, FeatureCache
from core.hyperparameters import Hyperparameters, TrainingSetup
from core.plan import default_object_store_bytes, plan_for
from search_spaces import SearchSpace, load_space, to_keras_tuner
from tuning.config import AshaSettings, ConfigError, SearchConfig, SearcherSettings
from tuning.run_dir import (
    METRIC,
    MODE,
    PLAN_FILE,
    SearchSummary,
    TrialSummary,
    check_new_run_dir,
    start_run_dir,
)
from tuning.tuner import HISTORY_COLUMNS

logger = logging.getLogger(__name__)

KERAS_TUNER_DIR = "keras_tuner"
"""KerasTuner's project inside the run directory (its oracle, tuner and trial files)."""

TRAINER_DIR = "trainer"
"""Inside each KerasTuner trial folder: the trial's ``RecipeTrainer.save``."""

HYPERBAND_FACTOR = 3
"""KerasTuner's default reduction factor between Hyperband's rounds."""

BAYESIAN_MODULES = ("scipy", "sklearn")
"""What KerasTuner's Bayesian oracle imports (its ``keras-tuner[bayesian]`` extra)."""

FIT_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
"""What a trial reports to the oracle per epoch: the metrics of ``model.fit``'s History."""


class EngineError(ConfigError):
    """The keras-tuner engine cannot do what was asked (the message names the key or flag)."""


def refuse_ray_engine_options(
    *,
    address: str | None = None,
    ray_temp_dir: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    resumed: bool = False,
    warm_start: str | Path | None = None,
) -> None:
    """Refuses ``run_search``'s arguments that only the Ray engine honours (and their flags).

    Raises:
        EngineError: naming the argument and its CLI flag.
    """
    if resumed:
        raise EngineError(
            "resume (--resume RUN_DIR): engine=keras-tuner cannot resume a search; start it "
            "again in a new run directory, or use engine=ray, whose searches resume",
            "resume",
        )
    if warm_start is not None:
        raise EngineError(
            f"warm_start={str(warm_start)!r} (--warm-start): seeds the Ray engine's Optuna "
            "searcher; engine=keras-tuner cannot be seeded with earlier trials",
            "warm_start",
        )
    given = {
        "address": (address, "--address"),
        "num_cpus": (num_cpus, "--num-cpus"),
        "num_gpus": (num_gpus, "--num-gpus"),
        "ray_temp_dir": (ray_temp_dir, None),
    }
    for name, (value, flag) in given.items():
        if value is None:
            continue
        spelled = f"{name}={value!r}" + (f" ({flag})" if flag else "")
        raise EngineError(
            f"{spelled}: engine=keras-tuner runs without Ray, one trial at a time on this "
            "machine; drop it (cpus_per_trial sets TensorFlow's threads, gpus_per_trial=1 "
            "gives the trials the GPU), or use engine=ray for a cluster",
            name,
        )


def check_keras_tuner_config(config: SearchConfig) -> None:
    """Refuses config keys that only the Ray engine honours.

    Raises:
        EngineError: naming the key and its value.
    """
    asha, searcher = AshaSettings(), SearcherSettings()
    resources = config.resources
    refusals = [
        (
            config.asha.grace_period != asha.grace_period,
            "grace_period",
            config.asha.grace_period,
            "is ASHA's; engine=keras-tuner has no ASHA (kt_oracle=hyperband stops trials "
            "early its own way)",
        ),
        (
            config.asha.reduction_factor != asha.reduction_factor,
            "reduction_factor",
            config.asha.reduction_factor,
            f"is ASHA's; engine=keras-tuner has no ASHA (kt_oracle=hyperband reduces by "
            f"KerasTuner's factor {HYPERBAND_FACTOR})",
        ),
        (
            config.searcher.sampler != searcher.sampler,
            "sampler",
            config.searcher.sampler,
            "is an Optuna sampler; engine=keras-tuner uses KerasTuner's kt_oracle instead",
        ),
        (
            config.searcher.first_trial != searcher.first_trial,
            "first_trial",
            config.searcher.first_trial,
            "sets the Optuna searcher's first trial; engine=keras-tuner builds no view while "
            "trials run, and its kt_oracle chooses every trial",
        ),
        (
            resources.max_concurrent_trials > 1,
            "max_concurrent_trials",
            resources.max_concurrent_trials,
            "needs parallel trials; engine=keras-tuner runs one at a time",
        ),
        (
            resources.gpus_per_trial not in (0.0, 1.0),
            "gpus_per_trial",
            resources.gpus_per_trial,
            "must be 0 (CPU) or 1 (this machine's GPU): engine=keras-tuner runs one trial "
            "at a time in this process",
        ),
        (
            config.schedule.max_failures < 0,
            "max_failures",
            config.schedule.max_failures,
            "must be >= 0 with engine=keras-tuner (KerasTuner retries a trial a set "
            "number of times, from its start)",
        ),
        (
            bool(config.storage.storage_path),
            "storage_path",
            config.storage.storage_path,
            f"is where Ray Tune keeps trials; engine=keras-tuner keeps them in "
            f"RUN_DIR/{KERAS_TUNER_DIR}",
        ),
    ]
    for refused, key, value, reason in refusals:
        if refused:
            raise EngineError(f"{key}={value!r} {reason}; use engine=ray for it", key)
    # KerasTuner needs these only once the Bayesian oracle is built: check before any work.
    missing = [module for module in BAYESIAN_MODULES if importlib.util.find_spec(module) is None]
    if config.engine.kt_oracle == "bayesian" and missing:
        raise EngineError(
            f"kt_oracle='bayesian' needs SciPy and scikit-learn (missing: {', '.join(missing)}): "
            "pip install 'keras-tuner[bayesian]'; kt_oracle=random and hyperband do not",
            "kt_oracle",
        )


def run_keras_tuner_search(
    config: SearchConfig, data_dir: str | Path, run_dir: str | Path, *, progress: bool = True
) -> SearchSummary:
    """Runs a whole search with KerasTuner and writes its results to ``run_dir``.

    Args:
        config: The validated search configuration (``engine`` is not read: a
            caller may run any config here).
        data_dir: Dataset in the Keras layout, or one folder of class folders.
        run_dir: New or empty directory for results (never overwritten).
        progress: Show the extraction progress bar and KerasTuner's trial lines.

    Returns:
        The summary also written to ``run_dir/results.json``.

    Raises:
        EngineError: for a setting only the Ray engine honours.
        SpaceError: for a space KerasTuner cannot express (a condition on a float range).
    """
    check_keras_tuner_config(config)
    run_dir = Path(run_dir).absolute()
    check_new_run_dir(run_dir)
    space = load_space(config.searcher.space)
    spec = get_backbone(config.features.backbone)
    space.validate_for_backbone(spec.num_blocks, spec.name)
    index = scan_dataset(data_dir, config.features.validation_fraction, config.seed)
    # Declared before any file is written: a space KerasTuner cannot express fails here.
    hyperparameters = declare_space(space)
    _configure_devices(config)
    project = run_dir / KERAS_TUNER_DIR
    # The same plan as the Ray engine's on this machine (a local Ray's object
    # store bounds it), so that both engines train on the same entries.
    request = config.feature_request(space)
    plan = plan_for(
        request,
        index,
        budget=config.features.cache_memory_budget,
        cache_location=config.cache_location,
        object_store_bytes=default_object_store_bytes(config.local_ray.object_store_memory),
        fresh_cost_limit=config.features.fresh_cost_limit,
    )
    plan.show(progress)
    start_run_dir(run_dir, config, space, data_dir, index.fingerprint, str(project))
    plan.write(run_dir / PLAN_FILE)
    cache = FeatureCache(config.cache_location)
    bundle = cache.ensure(index, plan.request(request), progress=progress)
    if plan.fresh:
        bundle.images["train"] = load_images(
            index.splits["train"], request.image_size, progress=False
        ).images
    tuner = _recipe_tuner_class()(
        make_oracle(config, hyperparameters),
        bundle=bundle,
        setup=config.training_setup(),
        time_budget_s=config.schedule.time_budget_s,
        directory=str(run_dir),
        project_name=KERAS_TUNER_DIR,
    )
    trials, seconds = search(tuner, config.schedule.max_epochs, progress=progress)
    summary = SearchSummary.create(
        config=config,
        data_path=data_dir,
        index=index,
        cache=cache.stats,
        built_by=None,
        cluster=None,  # type: ignore[arg-type]  # no Ray cluster ran it (the field is optional)
        trials=trials,
        seconds=seconds,
    )
    summary.write(run_dir)
    return summary


def declare_space(space: SearchSpace) -> Any:
    """The space as KerasTuner's ``HyperParameters``, every parameter declared once.

    Raises:
        SpaceError: for a condition KerasTuner cannot express (on a float range).
    """
    import keras_tuner

    hyperparameters = keras_tuner.HyperParameters()
    to_keras_tuner(space, hyperparameters)
    return hyperparameters


def search(tuner: Any, max_epochs: int, *, progress: bool) -> tuple[list[TrialSummary], float]:
    """Runs KerasTuner's search loop; returns every trial, in the order they started, and
    the seconds it took."""
    started = time.perf_counter()
    tuner.search(verbose=1 if progress else 0)
    seconds = time.perf_counter() - started
    trials = [
        summarize_keras_tuner_trial(
            tuner.oracle.trials[trial_id],
            tuner.histories.get(trial_id, []),
            max_epochs,
            Path(tuner.get_trial_dir(trial_id)),
        )
        for trial_id in tuner.oracle.start_order
    ]
    return trials, seconds


def make_oracle(config: SearchConfig, hyperparameters: Any) -> Any:
    """KerasTuner's oracle named by ``kt_oracle``, over the declared ``hyperparameters``.

    ``num_samples`` is the oracle's ``max_trials``; for Hyperband, whose brackets
    decide how many trials it runs, it caps them. Trials are retried
    ``max_failures`` times.
    """
    import keras_tuner

    schedule = config.schedule
    common: dict[str, Any] = {
        "objective": keras_tuner.Objective(METRIC, direction=MODE),
        "hyperparameters": hyperparameters,
        "allow_new_entries": False,
        "seed": oracle_seed(config.seed),
        "max_retries_per_trial": schedule.max_failures,
    }
    name = config.engine.kt_oracle
    if name == "hyperband":
        oracle = keras_tuner.oracles.HyperbandOracle(
            max_epochs=schedule.max_epochs, factor=HYPERBAND_FACTOR, **common
        )
        oracle.max_trials = schedule.num_samples
        return oracle
    if name == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=schedule.num_samples, **common)
    return keras_tuner.oracles.BayesianOptimizationOracle(
        max_trials=schedule.num_samples,
        num_initial_points=initial_points(schedule.num_samples, len(hyperparameters.space)),
        **common,
    )


def oracle_seed(seed: int) -> int:
    """The oracle's seed for the config's: KerasTuner takes seed 0 for "no seed" (random)."""
    return seed % 2**31 + 1


def initial_points(num_samples: int, dimensions: int) -> int:
    """Random trials before the Bayesian oracle's Gaussian process starts proposing.

    KerasTuner's default, three per dimension, would spend a whole small search
    (16 trials, 7 parameters) on random points; half the trials, and at most that
    default, leaves the other half to the Gaussian process.
    """
    return max(2, min(3 * dimensions, num_samples // 2))


def summarize_keras_tuner_trial(
    trial: Any, history: list[dict[str, Any]], max_epochs: int, trial_dir: Path
) -> TrialSummary:
    """One KerasTuner trial as ``results.json`` lists it, with the Ray engine's history rows.

    Args:
        trial: The oracle's ``keras_tuner.engine.trial.Trial``.
        history: The trainer's rows for every epoch the trial's model trained,
            those of the trial it continued (Hyperband) included.
        max_epochs: Epochs of a trial that is not stopped early.
        trial_dir: The trial's folder in KerasTuner's project.
    """
    searched = active_values(trial.hyperparameters)
    rows = [history_row(metrics) for metrics in history]
    last = rows[-1] if rows else {}
    failed = trial.status != "COMPLETED"
    epochs = int(last.get("training_iteration", 0))
    if failed:
        status = "error"
    elif epochs >= max_epochs:
        status = "completed"
    else:
        status = "stopped_early"
    return TrialSummary(
        trial_id=str(trial.trial_id),
        status=status,
        epochs=epochs,
        val_accuracy=None if failed else last.get(METRIC),
        val_loss=None if failed else last.get("val_loss"),
        hyperparameters=Hyperparameters.from_mapping(searched),
        searched=searched,
        history=rows,
        path=str(trial_dir),
        error=(trial.message or f"trial {trial.status}") if failed else None,
    )


def active_values(hyperparameters: Any) -> dict[str, Any]:
    """The recipe's hyperparameters a KerasTuner trial chose (no ``tuner/`` bookkeeping)."""
    return {
        name: value
        for name, value in hyperparameters.values.items()
        if name in Hyperparameters.names() and hyperparameters.is_active(name)
    }


def history_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """A trainer's epoch as a row of the Ray engine's history (``HISTORY_COLUMNS``).

    Columns the trainer does not report (what only the Ray trainable adds) are left out.
    """
    row = {"training_iteration": metrics["epoch"]}
    row.update({column: metrics[column] for column in HISTORY_COLUMNS if column in metrics})
    return row


def _configure_devices(config: SearchConfig) -> None:
    """TensorFlow's threads and GPUs as one trial of the Ray engine would get them.

    With ``gpus_per_trial=0`` the GPUs are hidden (features are then extracted on
    the CPU too); with 1 the trial uses this machine's GPU, growing its memory.
    The search runs in the caller's process: where TensorFlow already ran there
    (a notebook, a test) and cannot change, it goes on as TensorFlow is, with a
    warning.
    """
    from core.runtime import TensorFlowSettingsError, configure_tensorflow

    resources = config.resources
    if resources.gpus_per_trial == 0:
        import tensorflow as tf

        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError as error:
            logger.warning("TensorFlow's GPUs are already in use; they stay visible: %s", error)
    try:
        configure_tensorflow(
            max(1, int(resources.cpus_per_trial)), gpu_fraction=resources.gpus_per_trial
        )
    except TensorFlowSettingsError as error:
        logger.warning("%s; the search goes on with TensorFlow's settings as they are", error)


@functools.cache
def _recipe_tuner_class() -> type[Any]:
    """``RecipeTuner``, defined on first use: importing KerasTuner imports TensorFlow."""
    import keras
    import keras_tuner

    from core.training import RecipeTrainer

    class RecipeTuner(keras_tuner.engine.base_tuner.BaseTuner):
        """Runs a trial as the recipe's trainer on cached features, one epoch per step.

        Args:
            oracle: KerasTuner's oracle (see ``make_oracle``).
            bundle: The search's cached features.
            setup: What every trial takes from the search; its ``epochs`` is
                the plan (``max_epochs``) that the phase switch follows.
            time_budget_s: Start no trial after this many seconds (0: no limit).
            **kwargs: ``BaseTuner``'s ``directory`` and ``project_name``.
        """

        def __init__(
            self,
            oracle: Any,
            *,
            bundle: FeatureBundle,
            setup: TrainingSetup,
            time_budget_s: float,
            **kwargs: Any,
        ) -> None:
            super().__init__(oracle, **kwargs)
            self.bundle = bundle
            self.setup = setup
            self.time_budget_s = time_budget_s
            self.histories: dict[str, list[dict[str, Any]]] = {}
            self._started = time.monotonic()

        def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
            values = trial.hyperparameters.values
            target = int(values.get("tuner/epochs", self.setup.epochs))
            initial = int(values.get("tuner/initial_epoch", 0))
            setup = dataclasses.replace(self.setup, epochs=target, planned_epochs=self.setup.epochs)
            hparams = Hyperparameters.from_mapping(active_values(trial.hyperparameters))
            trainer = RecipeTrainer(hparams, setup, self.bundle)  # clears the Keras session
            try:
                parent = values.get("tuner/trial_id")
                if parent is not None:
                    trainer.restore(self.trainer_dir(parent))
                    if trainer.epoch != initial:
                        raise RuntimeError(
                            f"trial {parent} saved its trainer after epoch {trainer.epoch}, "
                            f"but Hyperband continues it from epoch {initial}"
                        )
                while not trainer.done:
                    trainer.train_epoch()
                    # Kept after every epoch: a trial that fails later still shows its epochs.
                    self.histories[trial.trial_id] = list(trainer.history)
                trainer.save(self.trainer_dir(trial.trial_id))
                rows = trainer.history[initial:]
            finally:
                # All trials run in this process: each frees what its training traced.
                trainer.close()
            # The epochs this trial trained, to the oracle, as model.fit reports them.
            history = keras.callbacks.History()
            history.history = {name: [row[name] for row in rows] for name in FIT_METRICS}
            return history

        def trainer_dir(self, trial_id: str) -> Path:
            return Path(self.get_trial_dir(trial_id)) / TRAINER_DIR

        def on_trial_end(self, trial: Any) -> None:
            super().on_trial_end(trial)
            if self.time_budget_s and time.monotonic() - self._started >= self.time_budget_s:
                # The oracle creates no trial once it holds max_trials.
                logger.info("time_budget_s=%g reached: no new trials", self.time_budget_s)
                self.oracle.max_trials = len(self.oracle.trials)

    return RecipeTuner
