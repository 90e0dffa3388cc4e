"""Building a search's missing cache entries in a Ray task, before any trial starts.

The task asks for a whole GPU when any node has one, so extraction runs on a
GPU node of a cluster; it runs once (``max_calls=1``: its process, with the
backbone in memory, exits afterwards). It first tries to read the images from
the files; when its node does not see the driver's data at the same path,
byte for byte, it answers ``ExtractionOutcome(needs_images=True)`` and the
driver sends the decoded images through the object store. So the data only
has to be where the driver is; the cache must be shared storage or a URI on
several nodes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.runtime import ClusterInfo
from core.data import DatasetIndex, LoadedImages, load_images, scan_dataset
from core.features import CACHED_SPLITS, CacheStats, FeatureCache, FeatureRequest

logger = logging.getLogger(__name__)


class ExtractionError(RuntimeError):
    """The extraction task could not build the features it was asked for."""


@dataclass(frozen=True)
class ExtractionOutcome:
    """What the extraction task answers.

    Attributes:
        needs_images: True when the task's node cannot read the driver's data
            (then nothing else is set, and the driver sends the images).
        stats: The entries it found cached and those it built.
        pid: The task's process.
        node: The task's node IP.
        gpu_ids: The GPUs Ray gave the task.
    """

    needs_images: bool = False
    stats: CacheStats = field(default_factory=CacheStats)
    pid: int = 0
    node: str = ""
    gpu_ids: tuple[str, ...] = ()


def build_features_on_cluster(
    cache_location: str,
    index: DatasetIndex,
    request: FeatureRequest,
    info: ClusterInfo,
    *,
    validation_fraction: float,
    seed: int,
    progress: bool = True,
) -> ExtractionOutcome | None:
    """Builds every missing entry of ``request`` in one Ray task.

    Args:
        cache_location: The cache, a URI or an absolute path (the task resolves
            nothing relative to its own working directory).
        index: The driver's scan of the data.
        request: The entries the search needs.
        info: The connected cluster (does any node have a GPU?).
        validation_fraction, seed: How ``index`` was split, to scan the data
            again on the task's node.
        progress: Show the extraction progress bar (in the task's log).

    Returns:
        Who built what, or None when everything was cached already.

    Raises:
        ExtractionError: when the task cannot use the images it was sent.
    """
    import ray

    missing = FeatureCache(cache_location).missing(index, request)
    if not missing:
        return None
    gpus = 1 if any(node.gpus >= 1 for node in info.nodes) else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_calls=1)(_extract)
    arguments = (cache_location, index, request, validation_fraction, seed, progress)
    outcome: ExtractionOutcome = ray.get(task.remote(*arguments, None))
    if outcome.needs_images:
        logger.info("the data is not on the extraction node; sending the decoded images")
        # Views need only the training images; plain entries need validation too.
        splits = CACHED_SPLITS if any(not key.is_view for key in missing) else ("train",)
        decoded = {
            split: load_images(index.splits[split], request.image_size, progress=progress)
            for split in splits
        }
        outcome = ray.get(task.remote(*arguments, ray.put(decoded)))
    if outcome.needs_images:
        raise ExtractionError("the feature-extraction task could not read the images it was sent")
    logger.info(
        "features prepared on node %s (pid %d, GPUs %s): %d built, %d cached",
        outcome.node,
        outcome.pid,
        ", ".join(outcome.gpu_ids) or "none",
        len(outcome.stats.misses),
        len(outcome.stats.hits),
    )
    return outcome


def _extract(
    cache_location: str,
    index: DatasetIndex,
    request: FeatureRequest,
    validation_fraction: float,
    seed: int,
    progress: bool,
    images: Mapping[str, LoadedImages] | None,
) -> ExtractionOutcome:
    """The task: builds the missing entries on this node, or asks for the images."""
    import ray

    if images is None and not _same_data_here(index, validation_fraction, seed):
        return ExtractionOutcome(needs_images=True)
    # TensorFlow keeps its default threads: no trial runs until this task is done.
    cache = FeatureCache(cache_location)
    cache.ensure(index, request, progress=progress, images=images)
    return ExtractionOutcome(
        stats=cache.stats,
        pid=os.getpid(),
        node=ray.util.get_node_ip_address(),
        gpu_ids=tuple(str(gpu) for gpu in ray.get_gpu_ids()),
    )


def _same_data_here(index: DatasetIndex, validation_fraction: float, seed: int) -> bool:
    """Whether this node reads the driver's dataset at the same path, byte for byte."""
    if not Path(index.root).is_dir():
        return False
    try:
        here = scan_dataset(index.root, validation_fraction, seed)
    except ValueError:
        return False
    return here.fingerprint == index.fingerprint


@dataclass
class ViewBuild:
    """Augmented views being built while trials run.

    Attributes:
        refs: Object reference per ``view_name(cut, strength)``: a trial that
            reads one waits for that strength's views alone.
        stats: The view entries found cached and those being built.
        order: The strengths in the order they are built.
    """

    refs: dict[str, Any] = field(default_factory=dict)
    stats: CacheStats = field(default_factory=CacheStats)
    order: tuple[float, ...] = ()


def build_views_while_trials_run(
    cache_location: str,
    index: DatasetIndex,
    request: FeatureRequest,
    info: ClusterInfo,
    *,
    validation_fraction: float,
    seed: int,
    gpus_per_trial: float,
    first: tuple[float, ...] = (),
) -> ViewBuild:
    """Starts building the missing views of ``request`` in an actor; returns at once.

    The actor holds one CPU (and a trial's share of a GPU when any node has
    one) from before the first trial starts until its last view is built, so
    Tune can never fill the cluster with trials that wait for views nobody
    builds. It builds one strength per call, in order; each call's results
    are the object-store entries trials read (one per cut), so a trial that
    needs a strength waits for that strength alone. The actor exits after its
    last call; the entries stay in the object store (the driver owns them).

    Strengths already cached are not sent to the actor (the caller reads them).

    Args:
        first: Strengths to build first, in this order (those the search's first
            trials ask for); the others follow, weakest first.
    """
    import ray

    from core.features import view_name

    cache = FeatureCache(cache_location)
    view_keys = [key for key in cache.keys_for(index, request) if key.is_view]
    missing = {key for key in view_keys if not cache.has(key)}
    build = ViewBuild()
    for key in view_keys:
        (build.stats.misses if key in missing else build.stats.hits).append(key.name)
    wanted = sorted({key.augmentation for key in missing})
    strengths = tuple(s for s in dict.fromkeys(first) if s in wanted)
    strengths += tuple(s for s in wanted if s not in strengths)
    if not strengths:
        return build
    cuts = tuple(dict.fromkeys(key.cut for key in view_keys))
    gpus = 0.0
    if any(node.gpus >= 1 for node in info.nodes):
        gpus = gpus_per_trial if 0 < gpus_per_trial < 1 else 1.0
    builder: Any = (
        ray.remote(num_cpus=1, num_gpus=gpus)(_ViewBuilder)
        .options(name=None, max_restarts=0)
        .remote(cache_location, index, request, cuts, gpus)
    )
    images = None
    if not ray.get(builder.sees_data.remote(validation_fraction, seed)):
        logger.info("the data is not on the view-building node; sending the training images")
        images = ray.put(
            {"train": load_images(index.splits["train"], request.image_size, progress=False)}
        )
    for strength in strengths:
        refs = builder.build.options(num_returns=len(cuts)).remote(strength, images)
        refs = [refs] if len(cuts) == 1 else refs
        for cut, ref in zip(cuts, refs, strict=True):
            build.refs[view_name(cut, strength)] = ref
    builder.__ray_terminate__.remote()  # queued after the builds: exits once they are done
    build.order = strengths
    logger.info(
        "building %d view entries (strengths %s) while trials start",
        len(missing),
        ", ".join(f"{s:g}" for s in strengths),
    )
    return build


class _ViewBuilder:
    """Builds one strength's views per call (see ``build_views_while_trials_run``)."""

    def __init__(
        self,
        cache_location: str,
        index: DatasetIndex,
        request: FeatureRequest,
        cuts: tuple[str, ...],
        gpu_share: float,
    ) -> None:
        from core.runtime import configure_tensorflow

        # One thread: trials run beside it. On a GPU, the share Ray gave it.
        configure_tensorflow(1, gpu_fraction=gpu_share if gpu_share < 1 else 0.0)
        self.cache_location = cache_location
        self.index = index
        self.request = request
        self.cuts = cuts

    def sees_data(self, validation_fraction: float, seed: int) -> bool:
        return _same_data_here(self.index, validation_fraction, seed)

    def build(self, strength: float, images: Mapping[str, LoadedImages] | None) -> Any:
        """This strength's views at every cut, built into the cache and returned."""
        from dataclasses import replace

        from core.features import view_name

        cache = FeatureCache(self.cache_location)
        request = replace(self.request, augmentations=(strength,))
        bundle = cache.ensure(self.index, request, progress=False, images=images)
        views = tuple(bundle.views[view_name(cut, strength)] for cut in self.cuts)
        return views[0] if len(views) == 1 else views
