"""Starting or joining Ray: the only place in bottletune that calls ``ray.init``."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

from cluster.auth import join_error, prepare_to_join

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for single-machine networking: "0" binds node addresses to loopback."""


def prefer_loopback() -> bool:
    """Keeps the processes of a local Ray started later in this process on 127.0.0.1.

    Ray picks the machine's outward-facing IP even for a single-node cluster.
    Its ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` setting makes it use loopback,
    but Ray reads it when it is first imported, so this must run before
    anything imports ray. Only for a Ray this process starts: a driver that
    joins a multi-node cluster needs its real address.

    Returns:
        True if the setting is (or already was) in force for this process.
    """
    if "ray" in sys.modules:
        in_force = os.environ.get(LOCAL_ONLY_ENV) == "0"
        if not in_force:
            logger.info("ray was imported before bottletune could keep a local Ray on loopback")
        return in_force
    os.environ.setdefault(LOCAL_ONLY_ENV, "0")
    return os.environ[LOCAL_ONLY_ENV] == "0"


@dataclass(frozen=True)
class NodeResources:
    """What one alive node offers."""

    address: str
    cpus: float
    gpus: float
    object_store_bytes: int = 0


@dataclass(frozen=True)
class ClusterInfo:
    """What the driver is connected to.

    Attributes:
        address: The GCS address, or "local" for a cluster this process started.
        dashboard_url: Where the Ray dashboard is served, if it runs.
        resources: Total cluster resources (CPU, GPU, memory, ...).
        nodes: CPUs and GPUs of each alive node.
        connected_here: True when this call connected the driver (started a
            local Ray or joined a cluster); False when Ray was already
            initialized by the caller, whose connection is then left alone.
    """

    address: str
    dashboard_url: str | None
    resources: dict[str, float]
    nodes: tuple[NodeResources, ...]
    connected_here: bool = True

    @property
    def trial_object_store_bytes(self) -> int:
        """The smallest object store of a node that can run trials (0: unknown).

        Every entry a search shares may be read on every node, so each trial
        node's store must hold the whole cache plan.
        """
        stores = [node.object_store_bytes for node in self.nodes if node.cpus > 0]
        return min(stores) if stores and all(stores) else 0


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    include_dashboard: bool = True,
    dashboard_host: str = LOOPBACK,
    dashboard_port: int | None = None,
    object_store_memory: int | None = None,
    temp_dir: str | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> ClusterInfo:
    """Starts a single-node Ray, or connects to an existing cluster.

    A local Ray started here keeps its dashboard on 127.0.0.1 unless
    ``dashboard_host`` says otherwise, and its processes too when
    ``prefer_loopback`` ran before ray was imported.

    Args:
        address: None starts a new local Ray in this process; "auto", a
            "host:port" GCS address or "ray://host:port" joins a running cluster.
        num_cpus: CPUs a local Ray may use (default: all).
        num_gpus: GPUs a local Ray announces (default: detected).
        include_dashboard: Start the dashboard with a local Ray.
        dashboard_host: Interface the local dashboard listens on. Anything but
            loopback exposes the dashboard (which can submit jobs) to the network,
            so it is logged as a warning.
        dashboard_port: Port of the local dashboard (None: Ray's default,
            8265, or the next free port when another Ray holds it).
        object_store_memory: Bytes for the local object store.
        temp_dir: Ray's session directory root for a local Ray.
        runtime_env: Runtime environment for the driver's job (e.g. working_dir).

    Returns:
        Where the driver is connected, and what the cluster has.
    """
    if address is None:
        prefer_loopback()
    import ray

    if ray.is_initialized():
        return _describe(ray, connected_here=False)
    if address is None:
        if dashboard_host not in (LOOPBACK, "localhost", "::1"):
            logger.warning(
                "the Ray dashboard will listen on %s:%s, reachable from the network: anyone "
                "who can reach it can see this search and submit jobs to this cluster",
                dashboard_host,
                dashboard_port or 8265,
            )
        kwargs: dict[str, Any] = {
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "include_dashboard": include_dashboard,
            "dashboard_host": dashboard_host,
            "runtime_env": runtime_env,
            "log_to_driver": True,
        }
        if dashboard_port:
            kwargs["dashboard_port"] = dashboard_port
        if object_store_memory:
            kwargs["object_store_memory"] = object_store_memory
        if temp_dir:
            kwargs["_temp_dir"] = os.path.abspath(temp_dir)
        # address="local" always starts a new Ray, never silently joins one
        # that happens to run on this machine.
        context = ray.init(address="local", **kwargs)
        return _describe(ray, context)
    # A token-authenticated cluster is joined with the token at hand, and one
    # that refuses it fails here in a second instead of after Ray's retries.
    prepare_to_join(address)
    try:
        context = ray.init(
            address=address, runtime_env=_quiet_workers(runtime_env), log_to_driver=True
        )
    except ConnectionError as error:
        raise join_error(address, error) from error
    return _describe(ray, context)


def _quiet_workers(runtime_env: dict[str, Any] | None) -> dict[str, Any]:
    """The job's runtime environment, with TensorFlow's start-up noise silenced in its workers.

    A local Ray's workers inherit this process's environment, but a joined
    cluster's do not: the settings travel in ``env_vars``. The caller's own
    ``env_vars`` win.
    """
    from core.runtime import quiet_environment

    environment = dict(runtime_env or {})
    environment["env_vars"] = {**quiet_environment(), **environment.get("env_vars", {})}
    return environment


def _describe(ray: Any, context: Any = None, *, connected_here: bool = True) -> ClusterInfo:
    gcs = getattr(ray.get_runtime_context(), "gcs_address", None) or "local"
    url = getattr(context, "dashboard_url", None) if context is not None else None
    dashboard = (url if url.startswith("http") else f"http://{url}") if url else None
    nodes = tuple(
        NodeResources(
            address=str(node.get("NodeManagerAddress", "")),
            cpus=float(node.get("Resources", {}).get("CPU", 0.0)),
            gpus=float(node.get("Resources", {}).get("GPU", 0.0)),
            object_store_bytes=int(node.get("Resources", {}).get("object_store_memory", 0)),
        )
        for node in ray.nodes()
        if node.get("Alive")
    )
    return ClusterInfo(
        address=gcs,
        dashboard_url=dashboard,
        resources={k: float(v) for k, v in ray.cluster_resources().items()},
        nodes=nodes,
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
    """Fails at once when no single node could ever hold one trial, instead of hanging.

    Ray Tune only warns and waits when a trial's resources fit no node; a
    search that can never start should say so. Nodes an autoscaler could add
    later are not known here.

    Raises:
        ValueError: naming the resource asked for and the largest node.
    """
    if any(n.cpus >= cpus_per_trial and n.gpus >= gpus_per_trial for n in info.nodes):
        return
    largest_cpus = max((n.cpus for n in info.nodes), default=0.0)
    largest_gpus = max((n.gpus for n in info.nodes), default=0.0)
    if not any(n.gpus >= gpus_per_trial for n in info.nodes):
        raise ValueError(
            f"gpus_per_trial={gpus_per_trial:g}: no node has that many GPUs (the largest has "
            f"{largest_gpus:g}); set gpus_per_trial=0 to train on CPUs or connect to a "
            "cluster with GPU nodes"
        )
    raise ValueError(
        f"cpus_per_trial={cpus_per_trial:g} with gpus_per_trial={gpus_per_trial:g}: no node "
        f"has both (the largest has {largest_cpus:g} CPUs, {largest_gpus:g} GPUs)"
    )


def local_session_dir() -> str | None:
    """The session directory of the Ray node this driver runs on (None if not on one).

    None for a driver connected through Ray Client (``ray://``), which has no
    local node.
    """
    from ray._private import worker  # no public API gives the session directory

    node = getattr(worker, "_global_node", None)
    return None if node is None else str(node.get_session_dir_path())
