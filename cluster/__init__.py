"""Ray connection, resources and the object store. The only package that calls ray.init."""

from __future__ import annotations

from cluster.auth import TokenAuthError
from cluster.object_store import SharedFeatures, share_features, share_with_trials
from cluster.runtime import (
    ClusterInfo,
    NodeResources,
    check_trial_fits,
    connect,
    local_session_dir,
    prefer_loopback,
    shutdown,
)

__all__ = [
    "ClusterInfo",
    "NodeResources",
    "SharedFeatures",
    "TokenAuthError",
    "check_trial_fits",
    "connect",
    "local_session_dir",
    "prefer_loopback",
    "share_features",
    "share_with_trials",
    "shutdown",
]
