"""Sharing cached features with trials through Ray's object store.

Every cache entry a search needs (one cut's features, or one strength's
augmented views at one cut) becomes one object in the object store. Trials
get the references and fetch only the entries their own hyperparameters use:
a node then holds one copy of each entry its trials read, and numpy arrays
come back zero-copy and read-only, so no trial copies them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.features import FeatureBundle
from core.hyperparameters import Hyperparameters

logger = logging.getLogger(__name__)


@dataclass
class SharedFeatures:
    """A ``FeatureBundle`` in the object store, one object per entry.

    Attributes:
        backbone, image_size, class_names: As in ``FeatureBundle``.
        labels: Object reference to ``{split: labels}``, as in ``FeatureBundle``.
        cuts: Object reference per cut, each to ``{split: features}``. A
            reference may be to features still being built (the plain pass).
        views: Object reference per ``view_name(cut, strength)``, each to the
            tuple of that strength's views. A reference may be to views still
            being built: a trial that reads it waits for it alone.
        fresh: (cut, strength) pairs that augment afresh every epoch instead
            (the cache plan's choice; such trials read ``images``).
        images: Object reference to the decoded training images, or None.
        nbytes: Size of what was read from the cache and shared (entries still being
            built are not counted).
    """

    backbone: str
    image_size: int
    class_names: tuple[str, ...]
    labels: Any = None
    cuts: dict[str, Any] = field(default_factory=dict)
    views: dict[str, Any] = field(default_factory=dict)
    fresh: tuple[tuple[str, float], ...] = ()
    images: Any = None
    nbytes: int = 0

    def fetch_for(self, hparams: Hyperparameters) -> FeatureBundle:
        """What one trial reads: its cuts, its views, and the images if it augments afresh."""
        from core.training import entries_for, needs_images

        cuts, views = entries_for(hparams, self.backbone, fresh=self.fresh)
        fresh = needs_images(hparams, self.backbone, fresh=self.fresh)
        return self.fetch(cuts, views, images=fresh)

    def fetch(
        self, cuts: Iterable[str], views: Iterable[str] = (), *, images: bool = False
    ) -> FeatureBundle:
        """A bundle of just these entries, read from this node's object store zero-copy.

        Raises:
            KeyError: naming an entry the search did not share.
            ValueError: the decoded images do not match the cached labels.
        """
        import ray

        wanted_cuts, wanted_views = list(dict.fromkeys(cuts)), list(dict.fromkeys(views))
        for name in wanted_cuts:
            if name not in self.cuts:
                raise KeyError(f"cut {name!r} was not shared; shared: {sorted(self.cuts)}")
        for name in wanted_views:
            if name not in self.views:
                raise KeyError(f"views {name!r} were not shared; shared: {sorted(self.views)}")
        if images and self.images is None:
            raise KeyError("the decoded images were not shared (no fresh augmentation planned)")
        labels, *fetched = ray.get(
            [self.labels]
            + [self.cuts[n] for n in wanted_cuts]
            + [self.views[n] for n in wanted_views]
        )
        decoded = {"train": ray.get(self.images)} if images else {}
        if images and len(decoded["train"]) != len(labels["train"]):
            raise ValueError(
                f"{len(decoded['train'])} decoded training images for "
                f"{len(labels['train'])} cached labels: the data changed since the "
                "features were cached"
            )
        return FeatureBundle(
            backbone=self.backbone,
            image_size=self.image_size,
            class_names=self.class_names,
            labels=labels,
            cuts=dict(zip(wanted_cuts, fetched[: len(wanted_cuts)], strict=True)),
            views=dict(zip(wanted_views, fetched[len(wanted_cuts) :], strict=True)),
            images=decoded,
        )


def local_object_store_bytes() -> int:
    """The object-store capacity of the node this process runs on (0 if unknown)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == here:
            return int(node.get("Resources", {}).get("object_store_memory", 0))
    return 0


def share_features(
    bundle: FeatureBundle,
    *,
    pending: Any = None,
    fresh: Iterable[tuple[str, float]] = (),
    images: np.ndarray | None = None,
) -> SharedFeatures:
    """Puts every entry of ``bundle`` in the object store once, as its own object.

    Args:
        bundle: The entries read from the cache.
        pending: Entries still being built (``cluster.extraction.FeatureBuild``):
            its plain cuts and labels, when it builds them, and its views.
        fresh: (cut, strength) pairs that augment afresh (the cache plan's).
        images: The decoded training images, for those trials.

    Features larger than this node's object store still work (Ray spills
    objects to disk and restores them when read), but trials then read them
    from disk: that is logged as a warning naming both sizes.
    """
    import ray

    capacity = local_object_store_bytes()
    if capacity and bundle.nbytes > capacity:
        logger.warning(
            "the search's cached features (%.2f GB) exceed this node's object store "
            "(%.2f GB): Ray will spill them to disk and trials will read them back from "
            "there. Fewer augmentation views or strengths, a shallower unfreeze_blocks "
            "range, feature_dtype float16, or a larger object store keep them in memory",
            bundle.nbytes / 1e9,
            capacity / 1e9,
        )
    shared = SharedFeatures(
        backbone=bundle.backbone,
        image_size=bundle.image_size,
        class_names=bundle.class_names,
        fresh=tuple((cut, float(strength)) for cut, strength in fresh),
        nbytes=bundle.nbytes + (images.nbytes if images is not None else 0),
    )
    if images is not None:
        shared.images = ray.put(np.asarray(images))
    if pending is not None and pending.labels is not None:
        # The plain pass's labels: those of the views read here are the training split's.
        shared.labels = pending.labels
        shared.cuts.update(pending.cuts)
    else:
        shared.labels = ray.put(bundle.labels)
    shared.views.update(pending.views if pending is not None else {})
    for cut, splits in bundle.cuts.items():
        shared.cuts[cut] = ray.put({split: np.asarray(array) for split, array in splits.items()})
    for name, arrays in bundle.views.items():
        shared.views[name] = ray.put(tuple(np.asarray(array) for array in arrays))
    logger.info(
        "shared %d feature entries through the object store (%.1f MB cached, %d being built)",
        len(shared.cuts) + len(shared.views),
        shared.nbytes / 1e6,
        len(pending.cuts) + len(pending.views) if pending is not None else 0,
    )
    return shared


def share_with_trials(trainable: Callable[..., Any], **objects: Any) -> Callable[..., Any]:
    """Puts each object in the object store once and passes it to every trial.

    ``tune.with_parameters`` stores the objects once per search; every trial on
    a node then reads the same copy.

    Args:
        trainable: A Ray Tune function trainable taking ``(config, **objects)``.
        **objects: Values for every trial (e.g. ``SharedFeatures``).
    """
    from ray import tune

    return tune.with_parameters(trainable, **objects)
