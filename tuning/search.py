"""Wiring one search: data and features, then Optuna + ASHA on Ray Tune, then results.

What decides (the Optuna sampler behind ``OptunaSearch``, and ASHA), what runs
(``recipe_trainable``) and what defines (the search space) stay separate, as in
KerasTuner's oracle / tuner / hypermodel split.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.backbones import get_backbone, weights_identity
from core.data import DatasetIndex, LoadedImages, load_images, scan_dataset
from core.features import CACHED_SPLITS, CacheStats, FeatureBundle, FeatureCache, is_uri
from core.hyperparameters import Hyperparameters, TrainingSetup
from search_spaces import SearchSpace, SpaceError, load_space, to_optuna
from tuning.config import SearchConfig, write_config
from tuning.monitoring import export_search_metrics, install_grafana_dashboard
from tuning.resume import (
    SavedRun,
    check_resume,
    fail_orphaned_study_trials,
    load_run,
    trials_in_saved_experiment,
    write_manifest,
)
from tuning.samplers import make_sampler
from tuning.trainable import TrialContext, recipe_trainable

logger = logging.getLogger(__name__)

METRIC = "val_accuracy"
MODE = "max"
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.yaml"
SPACE_FILE = "space.yaml"
TRIALS_DIR = "trials"
STUDY_FILE = "optuna.journal"
STUDY_NAME = "bottletune"


class SearchError(ValueError):
    """The search cannot start or produced no usable result."""


@dataclass
class SearchResult:
    """What a finished search leaves behind (also written to ``run_dir/results.json``)."""

    run_dir: Path
    best: dict[str, Any]
    trials: list[dict[str, Any]]
    cache: CacheStats = field(default_factory=CacheStats)
    dashboard_url: str | None = None


def needed_cuts(space: SearchSpace, backbone: str) -> tuple[list[str], list[float]]:
    """The cuts a search's trials start from, and the augmentation strengths they may use.

    Returns:
        (cut layer names, strengths above 0): the top block's output always (the
        head trains on it), plus the cut below the unfrozen blocks of every
        possible ``unfreeze_blocks`` value; each strength gets augmented views
        at every one of those cuts.
    """
    depths = space.unfreeze_block_values()
    return get_backbone(backbone).cuts_for(depths), space.augmentation_levels()


def prepare_features(
    config: SearchConfig,
    data_dir: str | Path,
    space: SearchSpace,
    *,
    progress: bool = True,
    index: DatasetIndex | None = None,
    images: Mapping[str, LoadedImages] | None = None,
    mirror_dir: str | None = None,
) -> tuple[DatasetIndex, FeatureBundle, CacheStats]:
    """Scans the data (unless ``index`` is given) and makes sure every entry is cached.

    Args:
        images: Decoded train/validation images to extract from instead of the files.
        mirror_dir: Local mirror of a remote cache (default under ~/.cache).
    """
    if index is None:
        index = scan_dataset(data_dir, config.validation_fraction, config.seed)
    cache = FeatureCache(config.cache_location, mirror_dir=mirror_dir)
    bundle = cache.ensure(
        index, **_cache_arguments(config, space), progress=progress, images=images
    )
    return index, bundle, cache.stats


def _cache_arguments(config: SearchConfig, space: SearchSpace) -> dict[str, Any]:
    cuts, augmentations = needed_cuts(space, config.backbone)
    return {
        "backbone": config.backbone,
        "weights": config.weights,
        "image_size": config.image_size,
        "cuts": cuts,
        "augmentations": augmentations,
        "views": config.augmentation_views,
        "dtype": config.feature_dtype,
        "seed": config.seed,
        "batch_size": config.batch_size,
    }


@dataclass
class ClusterBuild:
    """Where the search's features were prepared, by the Ray task that prepared them."""

    stats: CacheStats
    pid: int
    node: str
    gpu_ids: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "node": self.node, "gpu_ids": self.gpu_ids}


def build_features_on_cluster(
    config: SearchConfig,
    index: DatasetIndex,
    space: SearchSpace,
    info: Any,
    *,
    progress: bool = True,
) -> ClusterBuild | None:
    """Builds every missing cache entry in a Ray task, before any trial starts.

    The task asks for a whole GPU when any node has one, so extraction runs on
    a GPU node of a cluster; it runs once (``max_calls=1``: its process, with
    the backbone in memory, exits afterwards). The driver decodes the images
    and sends them through the object store, so the data only has to be where
    the driver is; the cache must be shared storage or a URI on several nodes.

    Returns:
        Who built what, or None when everything was cached already.
    """
    import ray

    # The task resolves nothing relative to its own working directory.
    config = config.replace(cache_dir=config.cache_location)
    cache = FeatureCache(config.cache_location)
    arguments = _cache_arguments(config, space)
    del arguments["batch_size"]  # how entries are built, not which
    missing = [key for key in cache.keys_for(index, **arguments) if not cache.has(key)]
    if not missing:
        return None
    gpus = 1 if any(node.gpus >= 1 for node in info.nodes) else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_calls=1)(_prepare_in_task)
    # First from the files, when the task's node sees the same data (one machine,
    # or shared storage): decoding then overlaps the model.
    outcome = ray.get(task.remote(config, index, space.to_dict(), None, progress))
    if outcome is None:
        splits = CACHED_SPLITS if any(not key.is_view for key in missing) else ("train",)
        logger.info("the data is not on the extraction node; sending the decoded images")
        decoded = {
            split: load_images(index.splits[split], config.image_size, progress=progress)
            for split in splits
        }
        outcome = ray.get(task.remote(config, index, space.to_dict(), ray.put(decoded), progress))
    if outcome is None:
        raise SearchError("the feature-extraction task could not read the images it was sent")
    stats, pid, node, gpu_ids = outcome
    logger.info(
        "features prepared on node %s (pid %d, GPUs %s): %d built, %d cached",
        node,
        pid,
        gpu_ids or "none",
        len(stats.misses),
        len(stats.hits),
    )
    return ClusterBuild(stats, pid, node, [str(gpu) for gpu in gpu_ids])


def _prepare_in_task(
    config: SearchConfig,
    index: DatasetIndex,
    space: dict[str, Any],
    images: dict[str, LoadedImages] | None,
    progress: bool,
) -> tuple[CacheStats, int, str, list[Any]] | None:
    """Builds the missing entries on this node; None when it needs the images sent."""
    import ray

    if images is None and not _same_data_here(index, config):
        return None
    # TensorFlow keeps its default threads: no trial runs until this task is done.
    _, _, stats = prepare_features(
        config, index.root, load_space(space), progress=progress, index=index, images=images
    )
    return stats, os.getpid(), ray.util.get_node_ip_address(), list(ray.get_gpu_ids())


def _same_data_here(index: DatasetIndex, config: SearchConfig) -> bool:
    """Whether this node reads the driver's dataset at the same path, byte for byte."""
    if not Path(index.root).is_dir():
        return False
    try:
        here = scan_dataset(index.root, config.validation_fraction, config.seed)
    except ValueError:
        return False
    return here.fingerprint == index.fingerprint


def run_search(
    config: SearchConfig,
    data_dir: str | Path,
    run_dir: str | Path,
    *,
    address: str | None = None,
    ray_temp_dir: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    progress: bool = True,
    resume: SavedRun | None = None,
) -> SearchResult:
    """Runs a whole search and writes its results to ``run_dir``.

    Args:
        config: The validated search configuration.
        data_dir: Dataset in the Keras layout, or one folder of class folders.
        run_dir: New or empty directory for results (never overwritten).
        address: None for a local single-node Ray, else "auto", "host:port"
            or "ray://host:port" of a running cluster.
        ray_temp_dir: Session directory root of a local Ray.
        num_cpus: CPUs of a local Ray (default: all).
        num_gpus: GPUs a local Ray announces (default: detected).
        progress: Show the extraction progress bar and Tune's progress table.
        resume: Continue the search saved in ``run_dir`` (see ``resume_search``)
            instead of starting one.

    Returns:
        The best trial, every trial's summary and the cache's hits and misses.
    """
    from cluster import (
        check_trial_fits,
        connect,
        prefer_loopback,
        share_features,
        share_with_trials,
        shutdown,
    )

    if address is None:
        prefer_loopback()  # before ray is imported
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    run_dir = Path(run_dir).absolute()
    if resume is None:
        if run_dir.exists() and not run_dir.is_dir():
            raise SearchError(f"run directory {run_dir} is a file; choose a new directory")
        if run_dir.exists() and any(run_dir.iterdir()):
            raise SearchError(
                f"run directory {run_dir} is not empty; choose a new one (or --resume it)"
            )
    space = load_space(config.space) if resume is None else resume.space
    spec = get_backbone(config.backbone)
    space.validate_for_backbone(spec.num_blocks, spec.name)
    sampler = make_sampler(config.sampler, config.seed)  # fails now on a missing dependency
    if max(space.unfreeze_block_values()) > 0 and config.grace_period <= config.head_epochs:
        logger.warning(
            "ASHA's first rung (grace_period=%d) comes before fine-tuning starts "
            "(head_epochs=%d): there, trials that fine-tune are judged on their head alone. "
            "A grace_period above head_epochs lets ASHA see fine-tuning.",
            config.grace_period,
            config.head_epochs,
        )
    # Bad data or a bad space fail here, before Ray starts.
    index = scan_dataset(data_dir, config.validation_fraction, config.seed)
    needed_cuts(space, config.backbone)

    if resume is None:
        _refuse_existing_experiment(experiment_location(config, run_dir))

    info = connect(
        address,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=config.include_dashboard,
        dashboard_host=config.dashboard_host,
        dashboard_port=config.dashboard_port or None,
        object_store_memory=config.object_store_memory or None,
        temp_dir=ray_temp_dir,
    )
    if info.dashboard_url:
        logger.info("Ray dashboard: %s", info.dashboard_url)
    try:
        check_trial_fits(info, config.cpus_per_trial, config.gpus_per_trial)
        if resume is None:
            # Only once the search can run: a refused one leaves RUN_DIR as it was.
            run_dir.mkdir(parents=True, exist_ok=True)
            write_config(config, run_dir / CONFIG_FILE)
            (run_dir / SPACE_FILE).write_text(_yaml(space.to_dict()))
            write_manifest(
                run_dir, data_dir, index.fingerprint, space, experiment_location(config, run_dir)
            )
        built = build_features_on_cluster(config, index, space, info, progress=progress)
        index, bundle, loaded = prepare_features(
            config, data_dir, space, progress=progress, index=index
        )
        if built is not None and loaded.misses:
            logger.warning(
                "the driver had to build %d cache entries the cluster task had built: the "
                "cache %s is not shared between the nodes; use shared storage or a URI "
                "(s3://, gs://) as cache_dir",
                len(loaded.misses),
                config.cache_location,
            )
        stats = built.stats if built is not None else loaded
        export_search_metrics(stats)
        install_grafana_dashboard()
        setup = TrainingSetup(
            backbone=config.backbone,
            weights=config.weights,
            image_size=config.image_size,
            epochs=config.max_epochs,
            head_epochs=config.head_epochs,
            seed=config.seed,
        )
        context = TrialContext(
            setup=setup,
            cpus_per_trial=config.cpus_per_trial,
            gpus_per_trial=config.gpus_per_trial,
        )
        trainable = tune.with_resources(
            share_with_trials(recipe_trainable, features=share_features(bundle), context=context),
            {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial},
        )
        del bundle  # the object store holds it now; the driver needs no copy
        # Trials checkpoint every epoch, so Tune snapshots its state often; on
        # short epochs it warns about that each time. The snapshots are small.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        if resume is not None:
            # Tune restores trial states, checkpoints, the scheduler and the
            # searcher (with the Optuna study) as saved; finished trials stay
            # finished, unfinished and errored ones continue from their
            # last checkpoint. Study trials asked for after that checkpoint
            # are orphans: set apart first (see fail_orphaned_study_trials).
            saved_trials = trials_in_saved_experiment(resume.experiment)
            if saved_trials is not None and (run_dir / STUDY_FILE).is_file():
                fail_orphaned_study_trials(
                    _journal_storage(run_dir / STUDY_FILE), STUDY_NAME, saved_trials
                )
            tuner = tune.Tuner.restore(
                resume.experiment,
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=True,
            )
        else:
            searcher = OptunaSearch(
                space=to_optuna(space),
                metric=METRIC,
                mode=MODE,
                sampler=sampler,
                storage=_journal_storage(run_dir / STUDY_FILE),
                study_name=STUDY_NAME,
            )
            scheduler = ASHAScheduler(
                time_attr="training_iteration",
                max_t=config.max_epochs,
                grace_period=config.grace_period,
                reduction_factor=config.reduction_factor,
            )
            tuner = _new_tuner(trainable, searcher, scheduler, config, run_dir, progress)
        started = time.perf_counter()
        grid = tuner.fit()
        seconds = time.perf_counter() - started
        dashboard_url = info.dashboard_url
    finally:
        shutdown(info)

    trials = [_summarize(grid[i], config.max_epochs) for i in range(len(grid))]
    scored = [t for t in trials if t["val_accuracy"] is not None]
    if not scored:
        errors = "; ".join(str(t["error"]) for t in trials if t["error"]) or "no trial reported"
        raise SearchError(f"no trial finished an epoch: {errors}")
    # The best trial is judged on its last reported epoch, as Ray Tune's
    # get_best_result(scope="last") does; ties go to the earlier trial.
    best = max(scored, key=lambda t: t["val_accuracy"])
    summary = {
        "metric": METRIC,
        "mode": MODE,
        "seconds": round(seconds, 2),
        "dataset": {
            "path": str(Path(data_dir).absolute()),
            "fingerprint": index.fingerprint,
            "layout": index.layout,
            "class_names": list(index.class_names),
            "counts": {split: len(records) for split, records in index.splits.items()},
        },
        "search": {
            "backbone": config.backbone,
            "weights": _absolute_weights(config.weights),
            "weights_identity": weights_identity(config.weights, config.seed),
            "image_size": config.image_size,
            "seed": config.seed,
            "head_epochs": config.head_epochs,
            "max_epochs": config.max_epochs,
            "validation_fraction": config.validation_fraction,
            "augmentation_views": config.augmentation_views,
            "feature_dtype": config.feature_dtype,
        },
        "cache": {
            "dir": config.cache_location,
            "hits": stats.hits,
            "misses": stats.misses,
            "built_by": built.to_dict() if built is not None else None,
        },
        "cluster": {"address": info.address, "nodes": [n.address for n in info.nodes]},
        "best_trial_id": best["trial_id"],
        "trials": trials,
    }
    (run_dir / RESULTS_FILE).write_text(json.dumps(summary, indent=2))
    return SearchResult(
        run_dir=run_dir, best=best, trials=trials, cache=stats, dashboard_url=dashboard_url
    )


def resume_search(
    run_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    config: SearchConfig | None = None,
    force: bool = False,
    address: str | None = None,
    ray_temp_dir: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    progress: bool = True,
) -> SearchResult:
    """Continues a search whose driver stopped (killed, crashed, interrupted).

    Finished trials are not run again; unfinished ones resume from their last
    checkpoint; the searcher continues from its saved state.

    Args:
        run_dir: The run directory of the interrupted search.
        data_dir: The data (default: the path the search started with).
        config: A config to check against the saved one (default: the saved one).
        force: Resume even when the data, the space or the config differ.

    Raises:
        ResumeError: When the run cannot be resumed, or differs and ``force`` is off.
    """
    saved = load_run(run_dir, CONFIG_FILE)
    data = Path(data_dir) if data_dir is not None else Path(saved.data_path)
    effective = config or saved.config
    index = scan_dataset(data, effective.validation_fraction, effective.seed)
    check_resume(
        saved,
        config=config,
        space=_current_space(effective.space, required=config is not None),
        fingerprint=index.fingerprint,
        data_path=data,
        force=force,
    )
    return run_search(
        effective,
        data,
        saved.run_dir,
        address=address,
        ray_temp_dir=ray_temp_dir,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        progress=progress,
        resume=saved,
    )


def experiment_location(config: SearchConfig, run_dir: Path) -> str:
    """Where Ray Tune keeps a search's trials: ``RUN_DIR/trials``, or under ``storage_path``.

    On several nodes, every node must reach it: ``storage_path`` then names
    shared storage (NFS, EFS, a mounted volume) or a URI (``s3://``, ``gs://``).
    """
    return f"{_storage_root(config, run_dir)}/{_experiment_name(config, run_dir)}"


def _refuse_existing_experiment(location: str) -> None:
    """Two runs must not share a Ray Tune experiment (under one storage_path, same name)."""
    if is_uri(location):
        import pyarrow.fs

        filesystem, path = pyarrow.fs.FileSystem.from_uri(location)
        exists = filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound
    else:
        exists = Path(location).exists()
    if exists:
        raise SearchError(
            f"{location} already holds a Ray Tune experiment (storage_path/run name); give "
            "the run directory another name, or --resume that run"
        )


def _storage_root(config: SearchConfig, run_dir: Path) -> str:
    if not config.storage_path:
        return str(run_dir)
    if is_uri(config.storage_path):
        return config.storage_path.rstrip("/")
    return str(Path(os.path.expanduser(config.storage_path)).absolute())


def _experiment_name(config: SearchConfig, run_dir: Path) -> str:
    """``trials`` inside the run directory; the run's own name under a shared storage_path."""
    return run_dir.name if config.storage_path else TRIALS_DIR


def _current_space(source: str, *, required: bool) -> SearchSpace | None:
    """The space a config names, as its file reads now (None if the file is gone and optional)."""
    try:
        return load_space(source)
    except SpaceError:
        if required:
            raise
        logger.warning(
            "the search space %s cannot be read now; resuming with the saved one", source
        )
        return None


def _new_tuner(
    trainable: Any,
    searcher: Any,
    scheduler: Any,
    config: SearchConfig,
    run_dir: Path,
    progress: bool,
) -> Any:
    from ray import tune

    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=config.num_samples,
            max_concurrent_trials=config.max_concurrent_trials or None,
            time_budget_s=config.time_budget_s or None,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=_experiment_name(config, run_dir),
            storage_path=_storage_root(config, run_dir),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            verbose=1 if progress else 0,
        ),
    )


def _absolute_weights(weights: str) -> str:
    """A weights file as an absolute path, so an exported config works from anywhere."""
    return weights if weights in ("imagenet", "none") else str(Path(weights).absolute())


def trial_name(trial: Any) -> str:
    """Short trial names and directories (Ray's default repeats every parameter)."""
    return f"trial_{trial.trial_id}"


def _summarize(result: Any, max_epochs: int) -> dict[str, Any]:
    metrics = result.metrics or {}
    accuracy = metrics.get(METRIC)
    if accuracy is not None and not math.isfinite(float(accuracy)):
        accuracy = None
    epochs = int(metrics.get("training_iteration", 0) or 0)
    history: list[dict[str, Any]] = []
    frame = result.metrics_dataframe
    if frame is not None and not frame.empty:
        columns = [
            c
            for c in ("training_iteration", "phase", "val_accuracy", "val_loss", "loss")
            if c in frame.columns
        ]
        history = json.loads(frame[columns].to_json(orient="records"))
    if result.error is not None:
        status = "error"
    elif epochs >= max_epochs:
        status = "completed"
    else:
        status = "stopped_early"
    return {
        "trial_id": metrics.get("trial_id") or Path(result.path).name,
        "status": status,
        "epochs": epochs,
        "val_accuracy": float(accuracy) if accuracy is not None else None,
        "val_loss": metrics.get("val_loss"),
        "hyperparameters": Hyperparameters.from_mapping(result.config).to_dict(),
        "searched": {k: v for k, v in result.config.items() if k in Hyperparameters.names()},
        "history": history,
        "path": result.path,
        "error": str(result.error) if result.error is not None else None,
    }


def _journal_storage(path: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
