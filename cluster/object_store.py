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

logger = logging.getLogger(__name__)


@dataclass
class SharedFeatures:
    """A ``FeatureBundle`` in the object store, one object per entry.

    Attributes:
        backbone, image_size, class_names, labels: As in ``FeatureBundle``
            (labels are small and travel with the references).
        cuts: Object reference per cut, each to ``{split: features}``.
        views: Object reference per ``view_name(cut, strength)``, each to the
            tuple of that strength's views.
        nbytes: Size of everything referenced.
    """

    backbone: str
    image_size: int
    class_names: tuple[str, ...]
    labels: dict[str, np.ndarray]
    cuts: dict[str, Any] = field(default_factory=dict)
    views: dict[str, Any] = field(default_factory=dict)
    nbytes: int = 0

    def fetch(self, cuts: Iterable[str], views: Iterable[str] = ()) -> FeatureBundle:
        """A bundle of just these entries, read from this node's object store zero-copy.

        Raises:
            KeyError: naming an entry the search did not share.
        """
        import ray

        wanted_cuts, wanted_views = list(dict.fromkeys(cuts)), list(dict.fromkeys(views))
        for name in wanted_cuts:
            if name not in self.cuts:
                raise KeyError(f"cut {name!r} was not shared; shared: {sorted(self.cuts)}")
        for name in wanted_views:
            if name not in self.views:
                raise KeyError(f"views {name!r} were not shared; shared: {sorted(self.views)}")
        fetched = ray.get(
            [self.cuts[n] for n in wanted_cuts] + [self.views[n] for n in wanted_views]
        )
        return FeatureBundle(
            backbone=self.backbone,
            image_size=self.image_size,
            class_names=self.class_names,
            labels=self.labels,
            cuts=dict(zip(wanted_cuts, fetched[: len(wanted_cuts)], strict=True)),
            views=dict(zip(wanted_views, fetched[len(wanted_cuts) :], strict=True)),
        )


def local_object_store_bytes() -> int:
    """The object-store capacity of the node this process runs on (0 if unknown)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == here:
            return int(node.get("Resources", {}).get("object_store_memory", 0))
    return 0


def share_features(bundle: FeatureBundle) -> SharedFeatures:
    """Puts every entry of ``bundle`` in the object store once, as its own object.

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
        labels=bundle.labels,
        nbytes=bundle.nbytes,
    )
    for cut, splits in bundle.cuts.items():
        shared.cuts[cut] = ray.put({split: np.asarray(array) for split, array in splits.items()})
    for name, arrays in bundle.views.items():
        shared.views[name] = ray.put(tuple(np.asarray(array) for array in arrays))
    logger.info(
        "shared %d feature entries (%.1f MB) through the object store",
        len(shared.cuts) + len(shared.views),
        shared.nbytes / 1e6,
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
