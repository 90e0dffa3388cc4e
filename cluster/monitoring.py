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

Ray's dashboard provisions a Grafana from ``SESSION/metrics/grafana/`` on the
head node; bottletune adds a dashboard of its own metrics there
(``install_grafana_dashboard``), so a Grafana started with Ray's ``grafana.ini``
shows them beside Ray's. The same dashboard is ``docs/grafana/bottletune.json``,
for a Grafana of your own.

Ray is imported only when a metric is first recorded, so that importing this
module stays cheap.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cluster.runtime import local_session_dir
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


GRAFANA_DASHBOARD_FILE = "bottletune_grafana_dashboard.json"
GRAFANA_DASHBOARD_UID = "bottletune"
GRAFANA_PROVISIONING = Path("metrics", "grafana", "provisioning", "dashboards", "default.yml")
"""Where, in a Ray session, the dashboard tells Grafana which folder to load dashboards from."""


def grafana_dashboard() -> dict[str, Any]:
    """A Grafana dashboard (JSON model) with a panel per bottletune metric.

    Queries read Ray's Prometheus data source and filter by the Ray session, as
    Ray's own dashboards do; trial gauges are drawn per ``trial_id``, cache
    counters per entry.
    """
    session = '{SessionName=~"$SessionName"}'
    panels: list[dict[str, Any]] = []
    queries = [
        (name, description, f"{PROMETHEUS_PREFIX}{name}{session}", "{{trial_id}}")
        for name, (_, description) in TRIAL_GAUGES.items()
    ] + [
        (
            name,
            description,
            f"sum by (entry) ({PROMETHEUS_PREFIX}{name}_total{session})",
            "{{entry}}",
        )
        for name, description in CACHE_COUNTERS.items()
    ]
    for number, (name, description, expression, legend) in enumerate(queries):
        panels.append(
            {
                "id": number + 1,
                "type": "timeseries",
                "title": name.removeprefix("bottletune_").replace("_", " "),
                "description": description,
                "datasource": "${datasource}",
                "gridPos": {"h": 8, "w": 12, "x": 12 * (number % 2), "y": 8 * (number // 2)},
                "targets": [{"refId": "A", "expr": expression, "legendFormat": legend}],
            }
        )
    return {
        "uid": GRAFANA_DASHBOARD_UID,
        "title": "bottletune search",
        "tags": ["bottletune", "ray"],
        "schemaVersion": 27,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"},
                {
                    "name": "SessionName",
                    "type": "query",
                    "datasource": "${datasource}",
                    "query": f"label_values({PROMETHEUS_PREFIX}{TRIAL_EPOCH}, SessionName)",
                    "includeAll": True,
                    "multi": True,
                },
            ]
        },
        "panels": panels,
    }


def install_grafana_dashboard() -> Path | None:
    """Adds bottletune's dashboard to the Grafana dashboards of the Ray session here.

    Only where Ray's dashboard provisioned Grafana, on the head node: the
    folder is the one Ray wrote into ``SESSION/metrics/grafana/provisioning/
    dashboards/default.yml`` (so it follows Ray's own settings for it). A driver
    on another node, or behind Ray Client, writes nothing. A folder that cannot
    be written is a warning, not an error: the search goes on.

    Returns:
        The dashboard file written, or None.
    """
    session = local_session_dir()
    directory = grafana_dashboards_folder(Path(session)) if session else None
    if directory is None:
        logger.info("no Grafana provisioned by Ray on this node; no Grafana dashboard written")
        return None
    path = directory / GRAFANA_DASHBOARD_FILE
    staging = directory / f".{GRAFANA_DASHBOARD_FILE}.tmp"
    try:
        # Grafana polls the folder: it must never read half a file.
        staging.write_text(json.dumps(grafana_dashboard(), indent=2) + "\n")
        os.replace(staging, path)
    except OSError as error:
        staging.unlink(missing_ok=True)
        logger.warning("could not write the Grafana dashboard to %s: %s", path, error)
        return None
    logger.info("Grafana dashboard of bottletune's metrics: %s", path)
    return path


def grafana_dashboards_folder(session: Path) -> Path | None:
    """The dashboards folder Ray's provisioning names in this session, if it exists."""
    provisioning = session / GRAFANA_PROVISIONING
    try:
        text = provisioning.read_text()
    except OSError:
        return None
    import yaml

    try:
        providers = (yaml.safe_load(text) or {}).get("providers") or []
        folders = [
            Path(p["options"]["path"]) for p in providers if p.get("options", {}).get("path")
        ]
    except (yaml.YAMLError, AttributeError, TypeError, KeyError):
        logger.warning("%s is not the Grafana provisioning Ray writes; skipped", provisioning)
        return None
    return next((folder for folder in folders if folder.is_dir()), None)
