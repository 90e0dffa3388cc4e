"""Watching a search while it runs: the Ray dashboard, Prometheus metrics, TensorBoard, the table.

One ``bottletune tune`` child process with the dashboard on serves every check,
because a search is the slow part. While it runs, the test reads what a user
would look at: the dashboard's jobs and actors views (the same HTTP endpoints
the dashboard's web page calls) and each node's Prometheus endpoint. After it,
the trials' TensorBoard files and the console's progress table.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cluster import monitoring

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SEARCH_TIMEOUT_S = 300
POLL_INTERVAL_S = 0.5
NUM_TRIALS = 2
TRIAL_ACTOR_CLASS = "ImplicitFunc"  # what Ray Tune runs a function trainable in
# Every trial fine-tunes one block, without augmentation: its first phase-2
# epoch builds the fine-tuning model, which keeps it alive for a few seconds
# after its first gauges are set, so that they are exported before it ends
# (a head-only trial of a few tiny epochs can end before its first export).
SPACE = """
unfreeze_blocks: 1
augmentation: 0.0
dropout: {type: float, low: 0.0, high: 0.5}
head_learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
finetune_learning_rate: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}
"""
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>.*)\} (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Observed:
    """What the dashboard and the metrics endpoints showed at some point of the search."""

    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    actors: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    dashboard_listens_on: set[str] = field(default_factory=set)

    def values(self, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {
            key: value
            for (sample, key), value in self.samples.items()
            if sample == name and all((k, v) in key for k, v in labels.items())
        }


class Dashboard:
    """The dashboard's HTTP API, authenticated with the cluster's token."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path_or_url: str) -> str:
        url = path_or_url if path_or_url.startswith("http") else self.url + path_or_url
        request = urllib.request.Request(url, headers=self.headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(response.read().decode())

    def get_json(self, path: str) -> Any:
        return json.loads(self.get(path))


def prometheus_samples(text: str) -> Iterator[tuple[str, tuple[tuple[str, str], ...], float]]:
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and match["name"].startswith(monitoring.PROMETHEUS_PREFIX + "bottletune_"):
            labels = tuple(sorted(LABEL.findall(match["labels"])))
            yield match["name"], labels, float(match["value"])


def poll_once(dashboard: Dashboard, observed: Observed) -> None:
    """One look at the jobs and actors views and at every Prometheus target."""
    for job in dashboard.get_json("/api/jobs/"):
        observed.jobs[str(job.get("job_id") or job.get("submission_id"))] = job
    actors = dashboard.get_json("/logical/actors")["data"]["actors"]
    observed.actors.update(actors)
    # Prometheus' own discovery of the nodes' metrics endpoints.
    for group in dashboard.get_json("/api/prometheus/sd"):
        for target in group["targets"]:
            for name, labels, value in prometheus_samples(
                dashboard.get(f"http://{target}/metrics")
            ):
                observed.samples[(name, labels)] = value


def listening_hosts(port: int) -> set[str]:
    """The local addresses a TCP port is listening on, from /proc/net/tcp and tcp6 (Linux)."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            if len(address) == 8:  # IPv4, little-endian
                hosts.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
            else:
                words = [bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, 32, 8)]
                hosts.add(socket.inet_ntop(socket.AF_INET6, b"".join(words)))
    return hosts


def watch(process: subprocess.Popen[bytes], dashboard: Dashboard) -> Observed:
    """Polls the dashboard until the search ends (bounded by SEARCH_TIMEOUT_S)."""
    observed = Observed()
    deadline = time.monotonic() + SEARCH_TIMEOUT_S
    while process.poll() is None and time.monotonic() < deadline:
        try:
            poll_once(dashboard, observed)
            if not observed.dashboard_listens_on:
                port = int(dashboard.url.rsplit(":", 1)[1])
                observed.dashboard_listens_on = listening_hosts(port)
        except (OSError, ValueError, KeyError) as error:  # not up yet, or shutting down
            observed.errors.append(f"{type(error).__name__}: {error}")
        time.sleep(POLL_INTERVAL_S)
    return observed


def read_tensorboard_scalars(event_file: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of a TensorBoard event file (TFRecord framing of ``Event`` protos)."""
    from tensorboardX.proto.event_pb2 import Event

    data = event_file.read_bytes()
    scalars: dict[str, list[tuple[int, float]]] = {}
    position = 0
    while position < len(data):
        (length,) = struct.unpack("<Q", data[position : position + 8])
        position += 12  # length and its CRC
        event = Event.FromString(data[position : position + length])
        position += length + 4  # record and its CRC
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def stop(process: subprocess.Popen[bytes]) -> None:
    """Ends the search's process group: Ctrl-C first (Ray shuts down), then SIGKILL."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_a_cli_search_shows_in_dashboard_metrics_tensorboard_and_console(
    shapes_data: Path, tmp_path: Path, ray_temp_dir: Path
) -> None:
    port = free_port()
    token = secrets.token_hex(32)
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        RAY_TMPDIR=str(ray_temp_dir),
        # The dashboard asks for this token (Ray >= 2.52 secures local clusters too).
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        # Metrics reach the node every second instead of every 10 s.
        RAY_metrics_report_interval_ms="1000",
    )
    run_dir = tmp_path / "run"
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    settings = {
        "image_size": 32, "space": space, "num_samples": NUM_TRIALS, "max_epochs": 3,
        "head_epochs": 1, "grace_period": 2, "cache_dir": tmp_path / "cache",
        "include_dashboard": "true", "dashboard_port": port,
    }  # fmt: skip
    command = [
        sys.executable, "-m", "cli", "tune", "--data", str(shapes_data), "--out", str(run_dir),
        "--config", "demo", "--num-cpus", "2",
        *[part for key, value in settings.items() for part in ("--set", f"{key}={value}")],
    ]  # fmt: skip
    stdout_path, stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=stdout, stderr=stderr, start_new_session=True
        )
        try:
            observed = watch(process, Dashboard(f"http://127.0.0.1:{port}", token))
            process.wait(timeout=60)
        finally:
            stop(process)
    console, log = stdout_path.read_text(), stderr_path.read_text(errors="replace")
    assert process.returncode == 0, log[-4000:]
    results = json.loads((run_dir / "results.json").read_text())
    trials = {trial["trial_id"]: trial for trial in results["trials"]}
    assert len(trials) == NUM_TRIALS

    # The console says where the dashboard is; it listens on loopback only.
    assert f"Ray dashboard: http://127.0.0.1:{port}" in log
    assert observed.dashboard_listens_on == {"127.0.0.1"}
    assert "reachable from the network" not in log

    # Jobs view: the search's driver. Actors view: one trial actor per trial, of that job.
    drivers = [job for job in observed.jobs.values() if job.get("type") == "DRIVER"]
    assert len(drivers) == 1, (observed.jobs, observed.errors[-5:])
    assert "cli tune" in drivers[0]["entrypoint"]
    trial_actors = [
        actor
        for actor in observed.actors.values()
        if actor["className"] == TRIAL_ACTOR_CLASS and actor["jobId"] == drivers[0]["job_id"]
    ]
    assert len(trial_actors) == NUM_TRIALS, [a["className"] for a in observed.actors.values()]

    # Prometheus: the driver counted each computed cache entry ...
    misses = observed.values("ray_" + monitoring.CACHE_MISSES + "_total")
    assert {dict(labels)["entry"] for labels in misses} == set(results["cache"]["misses"]) != set()
    assert set(misses.values()) == {1.0}
    # ... and trials exported their epochs, tagged by trial id, with the values they reported.
    accuracy = observed.values("ray_" + monitoring.TRIAL_VAL_ACCURACY)
    assert accuracy, f"no trial gauge seen; samples: {sorted(observed.samples)}"
    for labels, value in accuracy.items():
        trial = trials[dict(labels)["trial_id"]]
        reported = [epoch["val_accuracy"] for epoch in trial["history"]]
        assert any(value == pytest.approx(r, abs=1e-6) for r in reported), (value, reported)
    seen_trial = dict(next(iter(accuracy)))["trial_id"]
    for gauge in (monitoring.TRIAL_EPOCH_SECONDS, monitoring.TRIAL_EPOCH, monitoring.TRIAL_PHASE):
        values = observed.values("ray_" + gauge, trial_id=seen_trial)
        assert values and all(v > 0 for v in values.values()), gauge

    # Grafana: bottletune's dashboard sits with Ray's, where Ray's dashboard provisions
    # Grafana from, and charts exactly the metrics the nodes exported.
    (grafana_file,) = re.findall(r"Grafana dashboard of bottletune's metrics: (\S+)", log)
    assert Path(grafana_file).parent.name == "dashboards"
    assert (Path(grafana_file).parent / "default_grafana_dashboard.json").is_file()
    charted = {
        name
        for panel in json.loads(Path(grafana_file).read_text())["panels"]
        for target in panel["targets"]
        for name in re.findall(r"ray_bottletune_\w+", target["expr"])
    }
    exported = {name for name, _ in observed.samples}
    assert exported and exported <= charted, (exported, charted)
    # Every panel filters by Ray session: the samples carry that label.
    assert all(dict(labels).get("SessionName") for _, labels in observed.samples)

    # TensorBoard: Ray Tune wrote an event file per trial, with every epoch's val_accuracy.
    for trial_id, trial in trials.items():
        (event_file,) = (run_dir / "trials" / f"trial_{trial_id}").glob("events.out.tfevents.*")
        scalars = read_tensorboard_scalars(event_file)["ray/tune/val_accuracy"]
        assert [step for step, _ in scalars] == [e["training_iteration"] for e in trial["history"]]
        assert [value for _, value in scalars] == pytest.approx(
            [e["val_accuracy"] for e in trial["history"]], abs=1e-6
        )

    # The console's progress table has a val_accuracy column and every trial's status.
    assert "Trial status:" in console
    header = next(line for line in console.splitlines() if "Trial name" in line and "iter" in line)
    assert "val_accuracy" in header
    for trial_id, trial in trials.items():
        assert re.search(rf"trial_{trial_id}\s+TERMINATED\s", console), trial["status"]


def test_a_dashboard_host_other_than_loopback_is_served_there_with_a_warning(
    ray_temp_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cluster import connect, shutdown

    port = free_port()
    with caplog.at_level("WARNING", logger="cluster.runtime"):
        info = connect(
            None, num_cpus=1, num_gpus=0, dashboard_host="0.0.0.0", dashboard_port=port,
            object_store_memory=80 * 1024 * 1024, temp_dir=str(ray_temp_dir),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (listening := listening_hosts(port)) and time.monotonic() < deadline:
            time.sleep(0.5)  # the dashboard may still be starting
    finally:
        shutdown(info)
    assert listening == {"0.0.0.0"}, "the dashboard did not listen where it was asked to"
    assert f"listen on 0.0.0.0:{port}, reachable from the network" in caplog.text
    assert "submit jobs" in caplog.text
