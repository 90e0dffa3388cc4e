"""Custom Ray metrics of a search, for Prometheus (and the dashboard's Grafana panels).

Every Ray node serves Prometheus text at ``http://NODE:PORT/metrics``, where
``PORT`` is the node's ``MetricsExportPort`` in ``ray.nodes()``; the dashboard
lists those targets at ``/api/prometheus/sd``. Ray prefixes every metric with
``ray_``, and adds ``_total`` to counters, so the gauge ``bottletune_trial_val_accuracy``
is scraped as ``ray_bottletune_trial_val_accuracy``.

Each process sends its metrics to its node every ``RAY_metrics_report_interval_ms``
(10 s by default), so values show up a few seconds late. Gauges are live values:
a trial's series goes away about two intervals after its process stops
reporting. The per-epoch history stays in ``results.json`` and TensorBoard.

Ray is imported only when a metric is first recorded, so that importing this
module stays cheap.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from core.features import CacheStats

logger = logging.getLogger(__name__)

PROMETHEUS_PREFIX = "ray_"
"""What Ray puts before every metric name it exports."""

TRIAL_VAL_ACCURACY = "bottletune_trial_val_accuracy"
TRIAL_EPOCH_SECONDS = "bottletune_trial_epoch_seconds"
TRIAL_EPOCH = "bottletune_trial_epoch"
TRIAL_PHASE = "bottletune_trial_phase"
CACHE_HITS = "bottletune_feature_cache_hits"
CACHE_MISSES = "bottletune_feature_cache_misses"

TRIAL_GAUGES = {
    TRIAL_VAL_ACCURACY: ("val_accuracy", "Validation accuracy of a trial's last epoch."),
    TRIAL_EPOCH_SECONDS: ("epoch_seconds", "Wall time of a trial's last epoch, in seconds."),
    TRIAL_EPOCH: ("epoch", "Epochs a trial has trained (1-based)."),
    TRIAL_PHASE: ("phase", "Phase of a trial's last epoch: 1 head, 2 fine-tuning."),
}
"""Gauge name -> (key in the trainer's per-epoch metrics, description); tagged by trial_id."""

CACHE_COUNTERS = {
    CACHE_HITS: "Feature-cache entries a search found on disk.",
    CACHE_MISSES: "Feature-cache entries a search had to compute.",
}
"""Counter name -> description; tagged by the cache entry's name."""


PROGRESS_TABLE_FIRST = ("val_accuracy", "val_loss", "epoch", "phase")
"""The metrics a trial reports first, so that Tune's progress table shows them."""


def for_progress_table(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The same metrics, with validation accuracy and loss, epoch and phase first.

    Ray Tune's console table (``verbose=1``) has a column for only the first
    four numeric metrics of a report, in the order they were reported.
    """
    first = {key: metrics[key] for key in PROGRESS_TABLE_FIRST if key in metrics}
    return {**first, **metrics}


@functools.lru_cache(maxsize=1)
def _registry() -> dict[str, Any]:
    """The metric objects of this process, created once (Ray registers them by name)."""
    from ray.util.metrics import Counter, Gauge

    metrics: dict[str, Any] = {
        name: Gauge(name, description=description, tag_keys=("trial_id",))
        for name, (_, description) in TRIAL_GAUGES.items()
    }
    metrics.update(
        {
            name: Counter(name, description=description, tag_keys=("entry",))
            for name, description in CACHE_COUNTERS.items()
        }
    )
    return metrics


class TrialMetrics:
    """Exports one trial's per-epoch metrics as Ray gauges tagged by its trial id.

    Args:
        trial_id: Ray Tune's trial id, the ``trial_id`` tag of every gauge.
    """

    def __init__(self, trial_id: str) -> None:
        self.tags = {"trial_id": trial_id}

    def record_epoch(self, metrics: Mapping[str, Any]) -> None:
        """Sets each gauge from the trainer's metrics of one epoch (missing keys are skipped)."""
        registry = _registry()
        for name, (key, _) in TRIAL_GAUGES.items():
            value = metrics.get(key)
            if isinstance(value, (int, float)):
                registry[name].set(float(value), tags=self.tags)


def export_search_metrics(stats: CacheStats) -> None:
    """Counts the driver's feature-cache hits and misses, and logs where metrics are served.

    Call it once per search on a connected driver: a driver is a Ray worker
    too, so its counters are exported like a trial's gauges.

    Args:
        stats: The hits and misses of the search's feature cache, by entry name.
    """
    registry = _registry()
    for name, entries in ((CACHE_HITS, stats.hits), (CACHE_MISSES, stats.misses)):
        for entry in entries:
            registry[name].inc(1, tags={"entry": entry})
    for url in metrics_endpoints():
        logger.info("Prometheus metrics (%sbottletune_*): %s", PROMETHEUS_PREFIX, url)


def metrics_endpoints() -> list[str]:
    """The Prometheus URL of every alive node of the connected cluster."""
    import ray

    urls = []
    for node in ray.nodes():
        if node.get("Alive") and node.get("MetricsExportPort"):
            host = str(node["NodeManagerAddress"])
            host = f"[{host}]" if ":" in host else host  # IPv6
            urls.append(f"http://{host}:{node['MetricsExportPort']}/metrics")
    return urls
