"""Sharing cached features with trials through Ray's object store."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def share_with_trials(trainable: Callable[..., Any], **objects: Any) -> Callable[..., Any]:
    """Puts each object in the object store once and passes it to every trial.

    ``tune.with_parameters`` stores the objects once per search; every trial on
    a node then reads the same copy (numpy arrays come back zero-copy and
    read-only), so no trial recomputes or reloads features.

    Args:
        trainable: A Ray Tune function trainable taking ``(config, **objects)``.
        **objects: Large values for every trial (e.g. a ``FeatureBundle``).
    """
    from ray import tune

    for name, value in objects.items():
        size = getattr(value, "nbytes", None)
        if size is not None:
            logger.info("sharing %s (%.1f MB) through the object store", name, size / 1e6)
    return tune.with_parameters(trainable, **objects)
