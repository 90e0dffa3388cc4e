"""Building a search's missing cache entries in one Ray actor, while trials start.

``FeatureBuilder.start`` creates the actor as soon as Ray is up, so that its
process starts and imports TensorFlow while the cache plan is probed and
shown. ``build`` then queues, and returns at once:

1. the plain entries, every cut in one pass over the images (the cost of the
   top cut alone), when any is missing. Two calls return them: the first as
   soon as the top cut is stored, the second once the wider, earlier cuts are
   (at 128 px those are 28 times the top cut's bytes, and joining and writing
   them took about 1.8 s on 2 cores, which the first trial no longer waits for);
2. each missing augmentation strength's views at every cut, one strength per
   call, those the search's first trials ask for first.

Every call's results are object-store entries whose references trials get
before the calls run: a trial fetches only the entries its own hyperparameters
read and waits for those alone. So Tune starts its trials, their processes and
their TensorFlow, while the plain pass runs; the first trial (head only, on the
plain top cut: ``first_trial: plain``) trains as soon as that pass ends.

The actor holds one CPU (and a trial's share of a GPU when any node has one)
from before the first trial starts until its last entry is built, so Tune can
never fill the cluster with trials that wait for entries nobody builds. It
exits after its last call; the entries stay in the object store (the driver
owns them) and in the cache.

The actor first checks that it reads the driver's data at the same path, byte
for byte; when it does not, the driver sends the decoded images through the
object store. So the data only has to be where the driver is; for a later
search to find the entries, the cache must be shared storage or a URI.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cluster.runtime import ClusterInfo
from core.backbones import get_backbone
from core.data import DatasetIndex, LoadedImages, load_images, scan_dataset
from core.features import CACHED_SPLITS, CacheStats, FeatureCache, FeatureRequest, view_name
from core.plan import Profiling, measure_backbone

logger = logging.getLogger(__name__)


class ExtractionError(RuntimeError):
    """The feature builder could not build the entries it was asked for."""


@dataclass(frozen=True)
class ExtractionOutcome:
    """Where the plain entries were built (the plain pass's first result).

    Attributes:
        stats: The plain entries the builder found cached and those it built.
        pid: The builder's process.
        node: The builder's node IP.
        gpu_ids: The GPUs Ray gave the builder.
    """

    stats: CacheStats = field(default_factory=CacheStats)
    pid: int = 0
    node: str = ""
    gpu_ids: tuple[str, ...] = ()


@dataclass
class FeatureBuild:
    """Entries being built while trials run; every reference may still be pending.

    Attributes:
        cuts: Object reference per cut, each to ``{split: features}`` (empty
            when the plain entries were all cached).
        labels: Object reference to ``{split: labels}`` of the plain pass, or None.
        views: Object reference per ``view_name(cut, strength)``.
        stats: The entries the driver's cache held and those being built.
        order: The augmentation strengths being built, in build order.
        outcome: Object reference to the plain pass's ``ExtractionOutcome``, or None.
        calls: One small reference per builder call not yet seen to succeed
            (the plain pass's outcome, each strength's marker): a call's results
            fail together, so these say whether any failed without fetching
            features to the driver.
    """

    cuts: dict[str, Any] = field(default_factory=dict)
    labels: Any = None
    views: dict[str, Any] = field(default_factory=dict)
    stats: CacheStats = field(default_factory=CacheStats)
    order: tuple[float, ...] = ()
    outcome: Any = None
    calls: list[Any] = field(default_factory=list)

    def failure(self) -> BaseException | None:
        """The first error among the builder's finished calls (never waits for the others)."""
        import ray

        if not self.calls:
            return None
        ready, _ = ray.wait(self.calls, num_returns=len(self.calls), timeout=0)
        for ref in ready:
            try:
                ray.get(ref, timeout=0)
            except Exception as error:  # the builder's error, or its process's death
                return error
            self.calls.remove(ref)  # Tune asks every step: a call that succeeded is done
        return None

    def site(self, *, wait: bool = True) -> ExtractionOutcome | None:
        """Where the plain entries were built, once they are.

        Args:
            wait: Wait for the plain pass to end; off: None while it still runs.

        Returns:
            None when nothing plain was built (or it is still building, ``wait`` off).

        Raises:
            ExtractionError: the plain pass failed, naming why.
        """
        import ray

        if self.outcome is None:
            return None
        if not wait and not ray.wait([self.outcome], timeout=0)[0]:
            return None
        try:
            outcome: ExtractionOutcome = ray.get(self.outcome)
        except Exception as error:
            raise ExtractionError(f"building the plain features failed: {error}") from error
        return outcome


class FeatureBuilder:
    """The driver's handle on the feature-building actor (see the module docstring)."""

    def __init__(self, actor: Any, cache_location: str, index: DatasetIndex) -> None:
        self._actor = actor
        self._cache_location = cache_location
        self._index = index

    @classmethod
    def start(
        cls,
        cache_location: str,
        index: DatasetIndex,
        request: FeatureRequest,
        info: ClusterInfo,
        *,
        gpus_per_trial: float,
        needed: bool | None = None,
    ) -> FeatureBuilder | None:
        """Creates the actor when any entry of ``request`` is missing; returns at once.

        Args:
            cache_location: The cache, a URI or an absolute path (the actor
                resolves nothing relative to its own working directory).
            index: The driver's scan of the data.
            request: Everything the search could need (before the cache plan).
            info: The connected cluster (does any node have a GPU?).
            gpus_per_trial: A trial's GPUs: the builder takes as much of one GPU.
            needed: Whether any entry is missing, when the caller has already
                looked (None: the cache is looked at here).

        Returns:
            The handle, or None when the cache already holds every entry.
        """
        import ray

        if needed is None:
            needed = bool(FeatureCache(cache_location).missing(index, request))
        if not needed:
            return None
        gpus = 0.0
        if any(node.gpus >= 1 for node in info.nodes):
            gpus = gpus_per_trial if 0 < gpus_per_trial < 1 else 1.0
        actor = (
            ray.remote(num_cpus=1, num_gpus=gpus)(_FeatureBuilderActor)
            .options(name=None, max_restarts=0)
            .remote(cache_location, index, gpus)
        )
        return cls(actor, cache_location, index)

    def profiling(self, request: FeatureRequest) -> Profiling:
        """The cache plan's profile and timed probe, run by the actor; returns at once.

        It runs first in the actor's queue, as soon as its TensorFlow is
        imported, on the node and device that will extract: no second process
        imports TensorFlow and competes with it for the cores.
        """
        ref = self._actor.measure.remote(request.backbone, request.image_size)
        return Profiling(request.backbone, request.image_size, pending=_Measured(ref))

    def build(
        self,
        request: FeatureRequest,
        *,
        validation_fraction: float,
        seed: int,
        first: tuple[float, ...] = (),
        progress: bool = True,
    ) -> FeatureBuild:
        """Queues every missing entry of ``request`` (the planned one); returns once queued.

        Waits only for the actor to be placed and to check what data its node
        sees, so that it holds its CPU before Tune starts any trial.

        Args:
            validation_fraction, seed: How the index was split, to scan the data
                again on the actor's node.
            first: Strengths to build first, in this order (those the search's
                first trials ask for); the others follow, weakest first.
            progress: Show the plain pass's progress bar (in the actor's log).
        """
        import ray

        cache = FeatureCache(self._cache_location)
        keys = cache.keys_for(self._index, request)
        missing = [key for key in keys if not cache.has(key)]
        build = FeatureBuild()
        for key in keys:
            (build.stats.misses if key in missing else build.stats.hits).append(key.name)
        plain_missing = any(not key.is_view for key in missing)
        wanted = sorted({key.augmentation for key in missing if key.is_view})
        strengths = tuple(s for s in dict.fromkeys(first) if s in wanted)
        strengths += tuple(s for s in wanted if s not in strengths)
        if not missing:
            self.close()
            return build
        images = None
        if not ray.get(self._actor.sees_data.remote(validation_fraction, seed)):
            # Views need only the training images; plain entries need validation too.
            splits = CACHED_SPLITS if plain_missing else ("train",)
            logger.info("the data is not on the feature builder's node; sending the images")
            images = ray.put(
                {
                    split: load_images(
                        self._index.splits[split], request.image_size, progress=False
                    )
                    for split in splits
                }
            )
        if plain_missing:
            # Two calls: the first ends once the top cut is stored, so the first
            # trial trains while the wide, early cuts are still being written.
            top = get_backbone(request.backbone).top_cut
            cuts = (top, *(cut for cut in request.cuts if cut != top))
            plain = replace(request, cuts=cuts, augmentations=())
            build.labels, top_ref = self._actor.build_plain.options(num_returns=2).remote(
                plain, images, progress
            )
            rest = self._actor.finish_plain.options(num_returns=len(cuts)).remote()
            build.outcome, rest_refs = (rest, []) if len(cuts) == 1 else (rest[0], rest[1:])
            build.cuts = dict(zip(cuts, [top_ref, *rest_refs], strict=True))
            build.calls.append(build.outcome)
        view_cuts = tuple(dict.fromkeys(key.cut for key in keys if key.is_view))
        for strength in strengths:
            views = replace(request, augmentations=(strength,))
            marker, *refs = self._actor.build_views.options(num_returns=1 + len(view_cuts)).remote(
                views, view_cuts, images
            )
            build.calls.append(marker)
            for cut, ref in zip(view_cuts, refs, strict=True):
                build.views[view_name(cut, strength)] = ref
        self._actor.__ray_terminate__.remote()  # queued after the builds: exits once they are done
        build.order = strengths
        logger.info(
            "building %d cache entries (%s) while trials start",
            len(missing),
            ", ".join(
                (["plain, every cut in one pass"] if plain_missing else [])
                + [f"views at strength {s:g}" for s in strengths]
            ),
        )
        return build

    def close(self) -> None:
        """Stops the actor now, whatever it was doing (entries already built stay cached)."""
        import ray

        ray.kill(self._actor, no_restart=True)


class _FeatureBuilderActor:
    """Builds the plain entries, then one strength's views per call (see ``FeatureBuilder``)."""

    def __init__(self, cache_location: str, index: DatasetIndex, gpu_share: float) -> None:
        from core.runtime import configure_tensorflow

        # TensorFlow's default threads: the plain pass runs while trials wait
        # for it. On a GPU, the share Ray gave it caps its memory.
        configure_tensorflow(None, gpu_fraction=gpu_share if gpu_share < 1 else 0.0)
        self.cache_location = cache_location
        self.index = index
        self._plain: tuple[FeatureCache, Iterator[Any]] | Exception | None = None
        """The plain pass between ``build_plain`` and ``finish_plain``, or how it failed."""

    def sees_data(self, validation_fraction: float, seed: int) -> bool:
        return _same_data_here(self.index, validation_fraction, seed)

    def measure(self, backbone: str, image_size: int) -> list[Any]:
        return measure_backbone(backbone, image_size)

    def build_plain(
        self,
        request: FeatureRequest,
        images: Mapping[str, LoadedImages] | None,
        progress: bool,
    ) -> tuple[Any, Any]:
        """The plain pass over every cut; returns the labels and the first cut's features.

        Returns once the first cut (the top one) is in the cache; ``finish_plain``,
        the next call, writes and returns the others.
        """
        cache = FeatureCache(self.cache_location)
        entries = cache.plain_entries(self.index, request, progress=progress, images=images)
        try:
            _, features, labels = next(entries)
        except Exception as error:
            self._plain = error  # finish_plain names it too: the search reads that call
            raise
        self._plain = (cache, entries)
        return labels, features

    def finish_plain(self) -> Any:
        """Where the plain pass ran, then the other cuts' ``{split: features}``, in order."""
        import ray

        if not isinstance(self._plain, tuple):
            raise ExtractionError(f"the plain pass failed: {self._plain}")
        cache, entries = self._plain
        self._plain = None
        rest = [features for _, features, _ in entries]
        outcome = ExtractionOutcome(
            stats=cache.stats,
            pid=os.getpid(),
            node=ray.util.get_node_ip_address(),
            gpu_ids=tuple(str(gpu) for gpu in ray.get_gpu_ids()),
        )
        return (outcome, *rest) if rest else outcome

    def build_views(
        self,
        request: FeatureRequest,
        cuts: tuple[str, ...],
        images: Mapping[str, LoadedImages] | None,
    ) -> tuple[Any, ...]:
        """The strength (a small marker), then its views at every cut, built into the cache."""
        (strength,) = request.augmentations
        cache = FeatureCache(self.cache_location)
        bundle = cache.ensure(self.index, request, plain=False, progress=False, images=images)
        return (strength, *(bundle.views[view_name(cut, strength)] for cut in cuts))


class _Measured:
    """The actor's ``measure`` call, read as ``Profiling`` reads its interpreter."""

    def __init__(self, ref: Any) -> None:
        self._ref = ref

    def result(self) -> list[Any]:
        import ray

        try:
            measured: list[Any] = ray.get(self._ref)
        except Exception as error:  # the actor's error, or its process's death
            raise ExtractionError(f"the feature builder's probe failed: {error}") from error
        return measured


def _same_data_here(index: DatasetIndex, validation_fraction: float, seed: int) -> bool:
    """Whether this node reads the driver's dataset at the same path, byte for byte."""
    if not Path(index.root).is_dir():
        return False
    try:
        here = scan_dataset(index.root, validation_fraction, seed)
    except ValueError:
        return False
    return here.fingerprint == index.fingerprint
