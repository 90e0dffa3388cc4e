"""The search's custom Ray metrics, without a Ray cluster: what is recorded, with which tags."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from cluster import monitoring
from core.features import CacheStats

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class FakeMetric:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float, dict[str, str]]] = []

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.calls.append(("set", value, tags))

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self.calls.append(("inc", value, tags))


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeMetric]:
    names = [*monitoring.TRIAL_GAUGES, *monitoring.CACHE_COUNTERS]
    registry = {name: FakeMetric() for name in names}
    monkeypatch.setattr(monitoring, "_registry", lambda: registry)
    return registry


def test_an_epoch_sets_every_trial_gauge_tagged_by_trial_id(
    fake_registry: dict[str, FakeMetric],
) -> None:
    epoch = {"epoch": 3, "phase": 2, "val_accuracy": 0.75, "epoch_seconds": 1.5, "loss": 0.4}

    monitoring.TrialMetrics("abc123").record_epoch(epoch)

    tags = {"trial_id": "abc123"}
    assert fake_registry[monitoring.TRIAL_VAL_ACCURACY].calls == [("set", 0.75, tags)]
    assert fake_registry[monitoring.TRIAL_EPOCH_SECONDS].calls == [("set", 1.5, tags)]
    assert fake_registry[monitoring.TRIAL_EPOCH].calls == [("set", 3.0, tags)]
    assert fake_registry[monitoring.TRIAL_PHASE].calls == [("set", 2.0, tags)]
    assert fake_registry[monitoring.CACHE_HITS].calls == []


def test_a_missing_or_non_numeric_metric_leaves_its_gauge_alone(
    fake_registry: dict[str, FakeMetric],
) -> None:
    monitoring.TrialMetrics("t").record_epoch({"val_accuracy": None, "epoch": 1})

    assert fake_registry[monitoring.TRIAL_VAL_ACCURACY].calls == []
    assert fake_registry[monitoring.TRIAL_EPOCH_SECONDS].calls == []
    assert fake_registry[monitoring.TRIAL_EPOCH].calls == [("set", 1.0, {"trial_id": "t"})]


def test_the_driver_counts_each_cache_hit_and_miss_by_entry(
    fake_registry: dict[str, FakeMetric],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = "http://127.0.0.1:4242/metrics"
    monkeypatch.setattr(monitoring, "metrics_endpoints", lambda: [url])
    stats = CacheStats(hits=["vgg16-32px-block5_pool-aa"], misses=["b4-bb", "b3-cc"])

    with caplog.at_level(logging.INFO, logger=monitoring.__name__):
        monitoring.export_search_metrics(stats)

    assert fake_registry[monitoring.CACHE_HITS].calls == [
        ("inc", 1, {"entry": "vgg16-32px-block5_pool-aa"})
    ]
    assert fake_registry[monitoring.CACHE_MISSES].calls == [
        ("inc", 1, {"entry": "b4-bb"}),
        ("inc", 1, {"entry": "b3-cc"}),
    ]
    assert url in caplog.text


def test_metrics_endpoints_lists_alive_nodes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = [
        {"Alive": True, "NodeManagerAddress": "10.0.0.1", "MetricsExportPort": 8080},
        {"Alive": False, "NodeManagerAddress": "10.0.0.2", "MetricsExportPort": 8080},
        {"Alive": True, "NodeManagerAddress": "fd00::3", "MetricsExportPort": 9090},
    ]
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(nodes=lambda: nodes))

    assert monitoring.metrics_endpoints() == [
        "http://10.0.0.1:8080/metrics",
        "http://[fd00::3]:9090/metrics",
    ]


def test_metric_names_are_valid_for_prometheus_and_distinct() -> None:
    names = [*monitoring.TRIAL_GAUGES, *monitoring.CACHE_COUNTERS]

    assert len(set(names)) == len(names) == 6
    assert all(PROMETHEUS_NAME.match(name) and name.startswith("bottletune_") for name in names)


def test_the_real_registry_creates_ray_metrics_without_a_cluster() -> None:
    registry = monitoring._registry()

    kinds = {name: type(metric).__name__ for name, metric in registry.items()}
    assert kinds == {
        **{name: "Gauge" for name in monitoring.TRIAL_GAUGES},
        **{name: "Counter" for name in monitoring.CACHE_COUNTERS},
    }


def test_tunes_progress_table_gets_a_validation_accuracy_column() -> None:
    # Tune's console table shows only the first four numeric metrics reported;
    # the trainer's own order (epoch, phase, loss, accuracy, ...) would hide val_accuracy.
    from ray.tune.experimental.output import _infer_user_metrics

    epoch = {
        "epoch": 1, "phase": 1, "loss": 0.7, "accuracy": 0.5,
        "val_loss": 0.6, "val_accuracy": 0.55, "epoch_seconds": 0.1,
    }  # fmt: skip
    reordered = monitoring.for_progress_table(epoch)
    trial: Any = types.SimpleNamespace(last_result=reordered)

    assert reordered == epoch
    unordered: Any = types.SimpleNamespace(last_result=epoch)
    assert "val_accuracy" not in _infer_user_metrics([unordered])
    assert _infer_user_metrics([trial]) == ["val_accuracy", "val_loss", "epoch", "phase"]


def test_importing_monitoring_does_not_import_ray() -> None:
    code = "import json, sys, cluster.monitoring; print(json.dumps('ray' in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    assert json.loads(result.stdout.strip().splitlines()[-1]) is False


def dashboard_metric_names(dashboard: dict[str, Any]) -> set[str]:
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return {name for e in expressions for name in re.findall(r"ray_bottletune_\w+", e)}


def test_the_grafana_dashboard_charts_every_exported_metric() -> None:
    dashboard = monitoring.grafana_dashboard()
    prefix = monitoring.PROMETHEUS_PREFIX
    assert dashboard_metric_names(dashboard) == {
        *(prefix + name for name in monitoring.TRIAL_GAUGES),
        *(prefix + name + "_total" for name in monitoring.CACHE_COUNTERS),  # counters get _total
    }
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    # The copy in docs/ (for a Grafana of one's own) is this very dashboard.
    shipped = json.loads((REPO_ROOT / "docs" / "grafana" / "bottletune.json").read_text())
    assert shipped == dashboard, "docs/grafana/bottletune.json is stale; regenerate it"


def test_the_grafana_dashboard_goes_where_rays_dashboard_provisions_grafana(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = tmp_path / "session"
    monkeypatch.setattr(monitoring, "local_session_dir", lambda: str(session))
    assert monitoring.install_grafana_dashboard() is None  # no provisioned Grafana here

    # What Ray's dashboard writes: provisioning that names the dashboards folder.
    folder = tmp_path / "elsewhere" / "dashboards"
    folder.mkdir(parents=True)
    provisioning = session / monitoring.GRAFANA_PROVISIONING
    provisioning.parent.mkdir(parents=True)
    provisioning.write_text(
        "apiVersion: 1\nproviders:\n  - name: Ray\n    folder: Ray\n    type: file\n"
        f"    options:\n      path: {folder}\n"
    )
    written = monitoring.install_grafana_dashboard()
    assert written == folder / monitoring.GRAFANA_DASHBOARD_FILE
    assert json.loads(written.read_text()) == monitoring.grafana_dashboard()
    assert [p.name for p in folder.iterdir()] == [monitoring.GRAFANA_DASHBOARD_FILE]

    # A folder that cannot be written is a warning, and the search goes on.
    written.unlink()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):  # root writes anyway: make it a file instead
            folder.chmod(0o700)
            (folder / monitoring.GRAFANA_DASHBOARD_FILE).mkdir()
        assert monitoring.install_grafana_dashboard() is None
        assert not list(folder.glob(".*.tmp")), "a half-written file was left behind"
    finally:
        folder.chmod(0o700)

    monkeypatch.setattr(monitoring, "local_session_dir", lambda: None)  # Ray Client
    assert monitoring.install_grafana_dashboard() is None
