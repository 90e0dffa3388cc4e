"""Starting or joining Ray: the only place in bottletune that calls ``ray.init``."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for single-machine networking: "0" binds node addresses to loopback."""


@dataclass(frozen=True)
class ClusterInfo:
    """What the driver is connected to.

    Attributes:
        address: The GCS address, or "local" for a cluster this process started.
        dashboard_url: Where the Ray dashboard is served, if it runs.
        resources: Total cluster resources (CPU, GPU, memory, ...).
        started_here: True when this call started a local Ray.
        connected_here: True when this call connected the driver (started a
            local Ray or joined a cluster); False when Ray was already
            initialized by the caller, whose connection is then left alone.
    """

    address: str
    dashboard_url: str | None
    resources: dict[str, float]
    started_here: bool
    connected_here: bool = True


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    include_dashboard: bool = True,
    dashboard_host: str = LOOPBACK,
    dashboard_port: int = 8265,
    object_store_memory: int | None = None,
    temp_dir: str | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> ClusterInfo:
    """Starts a single-node Ray, or connects to an existing cluster.

    A local Ray started here keeps its processes and dashboard on 127.0.0.1
    (unless ``dashboard_host`` says otherwise, or Ray was imported earlier
    in the process without ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``).

    Args:
        address: None starts a new local Ray in this process; "auto", a
            "host:port" GCS address or "ray://host:port" joins a running cluster.
        num_cpus: CPUs a local Ray may use (default: all).
        num_gpus: GPUs a local Ray announces (default: detected).
        include_dashboard: Start the dashboard with a local Ray.
        dashboard_host: Interface the local dashboard listens on. Anything but
            loopback exposes the dashboard (which can submit jobs) to the network,
            so it is logged as a warning.
        dashboard_port: Port of the local dashboard.
        object_store_memory: Bytes for the local object store.
        temp_dir: Ray's session directory root for a local Ray.
        runtime_env: Runtime environment for the driver's job (e.g. working_dir).

    Returns:
        Where the driver is connected, and what the cluster has.
    """
    if address is None and "ray" not in sys.modules:
        # Ray picks the machine's outward-facing IP even for a single-node
        # cluster; this Ray setting keeps a local Ray's processes on loopback.
        # It must be set before ray is imported (Ray reads it at import time).
        os.environ.setdefault(LOCAL_ONLY_ENV, "0")
    import ray

    if ray.is_initialized():
        return _describe(ray, started_here=False, connected_here=False)
    if address is None:
        if dashboard_host not in (LOOPBACK, "localhost", "::1"):
            logger.warning(
                "the Ray dashboard will listen on %s:%s, reachable from the network: anyone "
                "who can reach it can see this search and submit jobs to this cluster",
                dashboard_host,
                dashboard_port,
            )
        kwargs: dict[str, Any] = {
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "include_dashboard": include_dashboard,
            "dashboard_host": dashboard_host,
            "dashboard_port": dashboard_port,
            "runtime_env": runtime_env,
            "log_to_driver": True,
        }
        if object_store_memory:
            kwargs["object_store_memory"] = object_store_memory
        if temp_dir:
            kwargs["_temp_dir"] = os.path.abspath(temp_dir)
        # address="local" always starts a new Ray, never silently joins one
        # that happens to run on this machine.
        ray.init(address="local", **kwargs)
        return _describe(ray, started_here=True)
    ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    return _describe(ray, started_here=False)


def _describe(ray: Any, *, started_here: bool, connected_here: bool = True) -> ClusterInfo:
    context = ray.get_runtime_context()
    gcs = getattr(context, "gcs_address", None) or "local"
    dashboard = None
    try:
        url = ray.worker.get_dashboard_url()
        if url:
            dashboard = url if url.startswith("http") else f"http://{url}"
    except Exception:  # the dashboard is optional (ray[default] may be absent)
        dashboard = None
    return ClusterInfo(
        address=gcs,
        dashboard_url=dashboard,
        resources={k: float(v) for k, v in ray.cluster_resources().items()},
        started_here=started_here,
        connected_here=connected_here,
    )


def shutdown(info: ClusterInfo) -> None:
    """Undoes ``connect``: a local Ray it started stops, a joined cluster is detached from.

    A joined cluster keeps running (``ray.shutdown`` only detaches the driver);
    a Ray the caller initialized before ``connect`` is left connected.
    """
    import ray

    if info.connected_here and ray.is_initialized():
        ray.shutdown()


def check_trial_fits(info: ClusterInfo, cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Fails at once when no node could ever hold one trial, instead of hanging.

    Raises:
        ValueError: naming the resource asked for and what the cluster has.
    """
    have_cpus = info.resources.get("CPU", 0.0)
    have_gpus = info.resources.get("GPU", 0.0)
    if cpus_per_trial > have_cpus:
        raise ValueError(
            f"cpus_per_trial={cpus_per_trial}: the cluster has {have_cpus:g} CPUs in all"
        )
    if gpus_per_trial > have_gpus:
        raise ValueError(
            f"gpus_per_trial={gpus_per_trial}: the cluster has {have_gpus:g} GPUs; set "
            "gpus_per_trial=0 to train on CPUs or connect to a cluster with GPU nodes"
        )
