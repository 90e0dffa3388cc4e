"""One search, as its steps: validate, connect, start the run directory, prepare and
share the features, fit, write the results.

Each step is a function of the module that owns it: the config and the run
directory (``tuning.config``, ``tuning.run_dir``), Ray (``cluster``), the
tuner (``tuning.tuner``) and the features (``core.features``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cluster.extraction import ExtractionError, FeatureBuild, FeatureBuilder
from core.backbones import get_backbone
from core.data import DatasetIndex, load_images, scan_dataset
from core.features import CacheStats, FeatureCache, FeatureRequest
from core.plan import CachePlan, Profiling, plan_for
from search_spaces import SearchSpace, SpaceError, load_space, to_optuna
from tuning.config import SearchConfig
from tuning.resume import SavedRun, check_resume, load_run
from tuning.run_dir import (
    CONFIG_FILE,
    PLAN_FILE,
    BuildSite,
    ClusterSummary,
    SearchSummary,
    TrialSummary,
    check_new_run_dir,
    start_run_dir,
)
from tuning.samplers import first_suggestions, make_sampler
from tuning.tuner import (
    Opening,
    experiment_location,
    fit,
    make_trainable,
    new_tuner,
    opening,
    refuse_existing_experiment,
    restore_tuner,
    summarize_trial,
)
from tuning.warm_start import plan_warm_start

logger = logging.getLogger(__name__)


class SearchError(ValueError):
    """The search cannot start or produced no usable result."""


@dataclass
class SearchResult:
    """What a finished search leaves behind (also in ``run_dir/results.json``)."""

    run_dir: Path
    summary: SearchSummary
    dashboard_url: str | None = None

    @property
    def best(self) -> TrialSummary:
        return self.summary.best

    @property
    def trials(self) -> list[TrialSummary]:
        return self.summary.trials

    @property
    def cache(self) -> CacheStats:
        return CacheStats(hits=self.summary.cache.hits, misses=self.summary.cache.misses)


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
    warm_start: str | Path | None = None,
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
        warm_start: An earlier run directory or ``best.json`` to seed the
            searcher with (see ``tuning.warm_start``); not with ``resume``.

    Returns:
        The run directory, its summary (every trial, the best one, the cache's
        hits and misses) and the dashboard's address.
    """
    if config.engine.engine == "keras-tuner":
        # KerasTuner's engine: this machine, one trial at a time, no Ray (tuning.kt_engine).
        from tuning.kt_engine import refuse_ray_engine_options, run_keras_tuner_search

        refuse_ray_engine_options(
            address=address,
            ray_temp_dir=ray_temp_dir,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            resumed=resume is not None,
            warm_start=warm_start,
        )
        summary = run_keras_tuner_search(config, data_dir, run_dir, progress=progress)
        return SearchResult(run_dir=Path(run_dir).absolute(), summary=summary)
    from cluster import check_trial_fits, connect, prefer_loopback, shutdown
    from cluster.monitoring import export_search_metrics, install_grafana_dashboard

    if address is None:
        prefer_loopback()  # before ray is imported
    from cluster.build_watch import StopWhenBuildFails

    run_dir = Path(run_dir).absolute()
    if warm_start is not None and resume is not None:
        raise SearchError("--warm-start: a resumed search keeps the trials it was seeded with")
    space, index = validate_search(config, data_dir, run_dir, resume)
    seeds = None
    if warm_start is not None:
        seeds = plan_warm_start(warm_start, config, space, index.fingerprint)
    first = opening(config, space, seeds) if resume is None else None
    if seeds is None and first is not None:
        logger.info(
            "first trial: %s (on the plain top cut, built first), its other values sampled; "
            "first_trial: sampled lets the sampler choose it",
            ", ".join(f"{name}={value}" for name, value in (space.plain_values() or {}).items()),
        )
    sampler = make_sampler(config.searcher.sampler, config.seed) if resume is None else None
    request = config.feature_request(space)
    experiment = experiment_location(config, run_dir)
    # The cache plan's profile and probe: by the feature builder when one is
    # needed (it starts once Ray is up), else in their own interpreter while Ray starts.
    new_plan = resume is None or not (run_dir / PLAN_FILE).is_file()
    needs_build = needs_builder(config, index, request)
    profiling = None
    if new_plan and not needs_build:
        profiling = Profiling(request.backbone, request.image_size)
    info = connect(address, temp_dir=ray_temp_dir, **local_ray_options(config, num_cpus, num_gpus))
    if info.dashboard_url:
        logger.info("Ray dashboard: %s", info.dashboard_url)
    builder = None
    try:
        check_trial_fits(info, config.resources.cpus_per_trial, config.resources.gpus_per_trial)
        # Started as soon as Ray is up: it runs the plan's probe first, then the builds.
        builder = FeatureBuilder.start(
            config.cache_location,
            index,
            request,
            info,
            gpus_per_trial=config.resources.gpus_per_trial,
            needed=needs_build,
        )
        if new_plan and builder is not None:
            profiling = builder.profiling(request)
        plan = plan_features(config, index, request, info, run_dir, resume, progress, profiling)
        if builder is None and plan.bytes_to_build:  # views the plan keeps below the top cut
            builder = FeatureBuilder.start(
                config.cache_location, index, request, info,
                gpus_per_trial=config.resources.gpus_per_trial, needed=True,
            )  # fmt: skip
        request = plan.request(request)
        if resume is None:
            # Only once the search can run: a refused one leaves RUN_DIR as it was.
            start_run_dir(run_dir, config, space, data_dir, index.fingerprint, experiment)
            plan.write(run_dir / PLAN_FILE)
        shared, build = prepare_features(
            config, index, request, space, plan, builder, progress, first
        )
        export_search_metrics(build.stats)
        install_grafana_dashboard()
        trainable = make_trainable(config, shared)
        watch = StopWhenBuildFails(build)
        if resume is None:
            tuner = new_tuner(
                trainable,
                config,
                space,
                run_dir,
                sampler=sampler,
                progress=progress,
                opening=first,
                stop=watch,
            )
        else:
            tuner = restore_tuner(trainable, run_dir, resume.experiment)
        results, seconds = fit(tuner)
        built_by = finish_build(config, index, request, build)
    finally:
        if builder is not None:
            builder.close()  # views still queued when the search ended are not built
        shutdown(info)
    summary = SearchSummary.create(
        config=config,
        data_path=data_dir,
        index=index,
        cache=build.stats,
        built_by=built_by,
        cluster=ClusterSummary(info.address, [node.address for node in info.nodes]),
        trials=[summarize_trial(result, config.schedule.max_epochs) for result in results],
        seconds=seconds,
    )
    summary.write(run_dir)
    return SearchResult(run_dir=run_dir, summary=summary, dashboard_url=info.dashboard_url)


def validate_search(
    config: SearchConfig, data_dir: str | Path, run_dir: Path, resume: SavedRun | None
) -> tuple[SearchSpace, DatasetIndex]:
    """Everything that can be checked before Ray starts: run directory, space, data.

    Returns:
        The search space (the saved one on resume) and the scanned data.
    """
    if resume is None:
        check_new_run_dir(run_dir)
    space = load_space(config.searcher.space) if resume is None else resume.space
    spec = get_backbone(config.features.backbone)
    space.validate_for_backbone(spec.num_blocks, spec.name)
    if max(space.unfreeze_block_values()) > 0 and (
        config.asha.grace_period <= config.schedule.head_epochs
    ):
        logger.warning(
            "ASHA's first rung (grace_period=%d) comes before fine-tuning starts "
            "(head_epochs=%d): there, trials that fine-tune are judged on their head alone. "
            "A grace_period above head_epochs lets ASHA see fine-tuning.",
            config.asha.grace_period,
            config.schedule.head_epochs,
        )
    index = scan_dataset(data_dir, config.features.validation_fraction, config.seed)
    if resume is None:
        refuse_existing_experiment(experiment_location(config, run_dir))
    return space, index


def local_ray_options(
    config: SearchConfig, num_cpus: int | None, num_gpus: int | None
) -> dict[str, Any]:
    """``cluster.connect``'s settings for a local Ray, from the config's ``local_ray`` group."""
    local = config.local_ray
    return {
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "include_dashboard": local.include_dashboard,
        "dashboard_host": local.dashboard_host,
        "dashboard_port": local.dashboard_port or None,
        "object_store_memory": local.object_store_memory or None,
    }


def plan_features(
    config: SearchConfig,
    index: DatasetIndex,
    request: FeatureRequest,
    info: Any,
    run_dir: Path,
    resume: SavedRun | None,
    progress: bool,
    profiling: Profiling | None = None,
) -> CachePlan:
    """The cache plan, shown before any work: a resumed search keeps the plan it started with.

    Raises:
        PlanError: the budget cannot hold the plain features, or the disk
            cannot hold what must be built (nothing is written then).
    """
    saved = run_dir / PLAN_FILE
    if resume is not None and saved.is_file():
        plan = CachePlan.read(saved)
    else:
        plan = plan_for(
            request,
            index,
            budget=config.features.cache_memory_budget,
            cache_location=config.cache_location,
            object_store_bytes=info.trial_object_store_bytes,
            profiling=profiling,
            fresh_cost_limit=config.features.fresh_cost_limit,
        )
    plan.show(progress)
    return plan


def likely_strengths(
    config: SearchConfig, space: SearchSpace, first: Opening | None = None
) -> tuple[float, ...]:
    """The augmentation strengths the search's first trials will ask for, in that order.

    From a dry run of the search's own seeded sampler over its first trials
    (as many as run at once, and a few more), its study opened as the search's
    own is (``first``: see ``tuning.tuner.opening``), so that the views those
    trials wait for are built first.
    """
    count = min(config.schedule.num_samples, 2 * max(1, config.resources.max_concurrent_trials) + 4)
    suggestions = first_suggestions(
        config.searcher.sampler, config.seed, to_optuna(space), count, opening=first
    )
    picked = (float(s.get("augmentation", 0.0)) for s in suggestions)  # type: ignore[arg-type]
    return tuple(dict.fromkeys(strength for strength in picked if strength > 0))


def needs_builder(config: SearchConfig, index: DatasetIndex, request: FeatureRequest) -> bool:
    """Whether the search surely builds features: it starts the builder before the plan.

    Views below the top cut are left out of the question: the plan may give
    them fresh augmentation instead (unfreeze 2 and 3 by default), and a warm
    cache lacks them for good. When they are all that is missing, the plan
    decides, and the builder starts after it only if it builds them.
    """
    top = get_backbone(request.backbone).top_cut
    surely = replace(request, view_cuts=(top,) if top in request.cuts else ())
    return bool(FeatureCache(config.cache_location).missing(index, surely))


def prepare_features(
    config: SearchConfig,
    index: DatasetIndex,
    request: FeatureRequest,
    space: SearchSpace,
    plan: CachePlan,
    builder: FeatureBuilder | None,
    progress: bool,
    first: Opening | None = None,
) -> tuple[Any, FeatureBuild]:
    """Shares the cached entries and queues the missing ones; returns before they are built.

    The builder (``cluster.extraction``) builds the plain entries first (every
    cut in one pass, the cost of the top cut alone), then the views, those the
    first trials ask for first; trials get their references at once and wait
    for their own entries alone. What the cache holds is read here.

    Returns:
        The shared features, and what is being built (its hits and misses).
    """
    from cluster import share_features

    build = FeatureBuild()
    if builder is not None:
        build = builder.build(
            request,
            validation_fraction=config.features.validation_fraction,
            seed=config.seed,
            first=likely_strengths(config, space, first),
            progress=progress,
        )
    cache = FeatureCache(config.cache_location)
    cached_strengths = tuple(s for s in request.augmentations if s not in build.order)
    cached = replace(request, augmentations=cached_strengths)
    bundle = cache.ensure(index, cached, plain=build.outcome is None, progress=progress)
    if builder is None:  # everything was cached
        build.stats = cache.stats
    images = None
    if plan.fresh:
        images = load_images(index.splits["train"], request.image_size, progress=False).images
    shared = share_features(bundle, pending=build, fresh=plan.fresh, images=images)
    return shared, build


def finish_build(
    config: SearchConfig, index: DatasetIndex, request: FeatureRequest, build: FeatureBuild
) -> BuildSite | None:
    """After the search: the builder's error if it failed, else where it built the plain entries.

    Raises:
        ExtractionError: one of the builder's calls failed (the search stopped then).
    """
    error = build.failure()
    if error is not None:
        raise ExtractionError(f"building the search's features failed: {error}") from error
    built = build.site(wait=False)  # a search can end (time_budget_s) before the plain pass
    if built is None:
        if build.outcome is not None:
            logger.warning(
                "the search ended before its plain features were built: the builder stops "
                "now, and the next search builds them"
            )
        return None
    logger.info(
        "plain features built on node %s (pid %d, GPUs %s) while trials started",
        built.node,
        built.pid,
        ", ".join(built.gpu_ids) or "none",
    )
    if FeatureCache(config.cache_location).missing(index, replace(request, augmentations=())):
        logger.warning(
            "the plain features built on node %s are not in the cache %s as this node sees "
            "it: the cache is not shared between the nodes, and the next search builds them "
            "again; use shared storage or a URI (s3://, gs://) as cache_dir",
            built.node,
            config.cache_location,
        )
    return BuildSite(built.pid, built.node, list(built.gpu_ids))


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
    index = scan_dataset(data, effective.features.validation_fraction, effective.seed)
    check_resume(
        saved,
        config=config,
        space=_current_space(effective.searcher.space, required=config is not None),
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
