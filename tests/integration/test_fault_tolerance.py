"""Nothing is lost when a trial's process, a node or the driver dies: real processes, killed.

Each test runs a small real search (random-init VGG16 on 32 px shapes) and kills
something in the middle of it:

- a trial process exits abruptly in the middle of an epoch -> the retry resumes
  from the checkpoint of the epoch before, not from epoch 0;
- a worker node of a three-node ``ray.cluster_utils.Cluster`` is removed ->
  the search finishes and every trial has a result;
- the driver (``bottletune tune`` in its own process group) gets SIGKILL ->
  ``bottletune tune --resume`` finishes the search without running the
  finished trials again, and the best config exports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tuning.config import SearchConfig, load_config
from tuning.search import run_search
from tuning.trainable import CRASH_EPOCH_ENV, CRASH_MARKER_ENV

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# Batches of 4: an epoch of the 24 training images has 6 batches, so a trial
# can die in the middle of one.
SPACE = """
dropout: {type: float, low: 0.0, high: 0.5}
unfreeze_blocks: {type: int, low: 0, high: 1}
head_learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
augmentation: 0.0
dense_units: 16
batch_size: 4
"""
# Every trial fine-tunes after its first epoch: a head-only trial's epochs take
# milliseconds here, too short to be caught running when a node is removed.
FINETUNE_SPACE = SPACE.replace("{type: int, low: 0, high: 1}", "1")


def small_config(tmp_path: Path, *, space_text: str = SPACE, **overrides: object) -> SearchConfig:
    space = tmp_path / "space.yaml"
    space.write_text(space_text)
    values: dict[str, object] = {
        "weights": "none",
        "image_size": 32,
        "num_samples": 3,
        "max_epochs": 3,
        "head_epochs": 1,
        "grace_period": 3,  # no early stopping: every trial runs all its epochs
        "max_concurrent_trials": 2,
        "cpus_per_trial": 1,
        "include_dashboard": False,
        "cache_dir": str(tmp_path / "cache"),
        "space": str(space),
        "seed": 1,
    }
    values.update(overrides)
    return load_config(overrides=values)


def reports(trial_dir: Path) -> list[dict[str, Any]]:
    """A trial's reports as Ray Tune wrote them, oldest first."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def all_reports(run_dir: Path, trials: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every trial's reports, from ``RUN_DIR/trials`` or the experiment folder ``trials``."""
    trials = trials or run_dir / "trials"
    if not trials.is_dir():
        return {}
    return {d.name: reports(d) for d in sorted(trials.glob("trial_*"))}


def test_a_crashed_trial_resumes_from_its_last_checkpoint(
    shapes_data: Path, tmp_path: Path, ray_temp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "crashed"
    # Ray's worker processes inherit the environment of the Ray that run_search starts.
    monkeypatch.setenv(CRASH_MARKER_ENV, str(marker))
    monkeypatch.setenv(CRASH_EPOCH_ENV, "2")
    # Trials and checkpoints go to a storage_path, as they would on shared storage.
    shared = tmp_path / "shared"
    config = small_config(tmp_path, max_failures=1, storage_path=str(shared))
    result = run_search(
        config, shapes_data, tmp_path / "run", num_cpus=2, num_gpus=0,
        ray_temp_dir=str(ray_temp_dir), progress=False,
    )  # fmt: skip

    assert marker.is_file(), "no trial process was killed"
    _, epoch, batch = marker.read_text().split()
    assert (epoch, batch) == ("2", "1"), "the trial died in the middle of epoch 2"
    assert all(t.status == "completed" and t.epochs == 3 for t in result.trials)
    crashed = {
        name: lines
        for name, lines in all_reports(result.run_dir, shared / "run").items()
        if any(line["resumed"] for line in lines)
    }
    assert len(crashed) == 1, "exactly one trial died and was retried"
    lines = next(iter(crashed.values()))
    # Epoch 1 was checkpointed, epoch 2 died two batches in: the retry
    # restored epoch 1 and went on with epoch 2, without training epoch 1 again.
    # (Under a storage_path, Ray may rewrite result.json from the restored
    # checkpoint, so the first attempt's lines are not all there.)
    assert [line["epoch"] for line in lines if line["resumed"]] == [2, 3]
    assert [line["epoch"] for line in lines if not line["resumed"]] in ([], [1])
    assert not (result.run_dir / "trials").exists()
    assert all(Path(t.path).parent == shared / "run" for t in result.trials)


def ancestors(pid: int) -> list[int]:
    """The parent, grandparent, ... of a process (from /proc), nearest first."""
    chain = []
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        # The command name (field 2) may hold spaces; the parent's pid follows it.
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        chain.append(pid)
    return chain


def raylet_pid(node: Any) -> int:
    """The raylet of a ``ray.cluster_utils.Cluster`` node: its workers are the raylet's children."""
    from ray._private import ray_constants

    return int(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)


def test_removing_a_worker_node_mid_search_loses_no_trial(
    shapes_data: Path, tmp_path: Path
) -> None:
    import ray
    from ray.cluster_utils import Cluster

    store = 80 * 1024 * 1024
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": store},
    )
    # Two GPU workers (fake GPUs): one trial each, the head holds none.
    workers = [
        cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=store) for _ in range(2)
    ]
    cluster.wait_for_nodes()
    raylets = {raylet_pid(node): node for node in workers}
    run_dir = tmp_path / "run"
    max_epochs = 6
    victims: list[str] = []
    removed_after: list[int] = []

    def remove_the_node_of_a_running_trial() -> None:
        """Removes the worker node of a trial with two epochs or more reported, far from done.

        Tune only hands a trial its next epoch once the checkpoint of the one
        before is registered, so a trial with two reports has a checkpoint to
        resume from.
        """
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            for name, lines in all_reports(run_dir).items():
                if not 2 <= len(lines) <= max_epochs - 2:
                    continue
                node = next((raylets[p] for p in ancestors(lines[-1]["pid"]) if p in raylets), None)
                if node is not None:
                    cluster.remove_node(node)
                    victims.append(name)
                    removed_after.append(len(lines))
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=remove_the_node_of_a_running_trial, daemon=True)
    killer.start()
    try:
        config = small_config(
            tmp_path, space_text=FINETUNE_SPACE, num_samples=3, max_epochs=max_epochs,
            grace_period=max_epochs, max_failures=3, gpus_per_trial=0.5,
        )  # fmt: skip
        result = run_search(config, shapes_data, run_dir, address=cluster.address, progress=False)
        alive = [node for node in ray.nodes() if node["Alive"]] if ray.is_initialized() else []
    finally:
        killer.join(timeout=5)
        ray.shutdown()
        cluster.shutdown()

    assert victims, "no worker node was removed while one of its trials ran"
    assert not alive  # run_search detached from the cluster it joined
    assert len(result.trials) == 3
    assert all(t.status == "completed" and t.epochs == max_epochs for t in result.trials), [
        (t.trial_id, t.status, t.epochs, t.error) for t in result.trials
    ]
    # The trial that ran on the removed node went on from its checkpoint in a
    # new process on the other node. Reports are at least once: Tune logs an
    # epoch's report before it registers that epoch's checkpoint, so the epoch
    # in flight when the node went may be reported again by the retry.
    lines = all_reports(run_dir)[victims[0]]
    before = [line["epoch"] for line in lines if not line["resumed"]]
    retried = [line["epoch"] for line in lines if line["resumed"]]
    assert before == list(range(1, len(before) + 1)) and len(before) >= removed_after[0]
    assert retried, "the trial on the removed node never retried"
    assert retried == list(range(retried[0], max_epochs + 1))
    assert retried[0] in (len(before), len(before) + 1), (before, retried)
    assert len({line["pid"] for line in lines}) == 2, "the retry ran in a new process"
    # results.json keeps each epoch once, as the retry reported it.
    victim = next(t for t in result.trials if t.path.endswith(victims[0]))
    assert [row["training_iteration"] for row in victim.history] == list(range(1, max_epochs + 1))
    summary = json.loads((run_dir / "results.json").read_text())
    written = next(t for t in summary["trials"] if t["trial_id"] == victim.trial_id)
    assert [row["training_iteration"] for row in written["history"]] == list(
        range(1, max_epochs + 1)
    )


def _kill_process_group_and_ray(process: subprocess.Popen[str], ray_dir: Path) -> None:
    """SIGKILL the driver's process group, then any Ray process of its session left over."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(ray_dir).encode() in cmdline.read_bytes():
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def test_a_killed_driver_resumes_without_rerunning_finished_trials(
    shapes_data: Path, tmp_path: Path
) -> None:
    # Ray's socket paths must stay under 107 characters: a short folder of its own.
    ray_dir = Path(tempfile.mkdtemp(prefix="bt-ray-", dir="/tmp"))
    env = dict(os.environ, RAY_TMPDIR=str(ray_dir), PYTHONPATH=str(REPO))
    small_config(tmp_path)  # writes the space file
    run_dir = tmp_path / "run"
    settings = [
        f"{key}={value}"
        for key, value in {
            "weights": "none", "image_size": 32, "num_samples": 4, "max_epochs": 3,
            "head_epochs": 1, "grace_period": 3, "max_concurrent_trials": 1,
            "include_dashboard": "false", "cache_dir": tmp_path / "cache",
            "space": tmp_path / "space.yaml", "seed": 2,
        }.items()
    ]  # fmt: skip
    command = [sys.executable, "-m", "cli", "tune", "--data", str(shapes_data)]
    command += ["--out", str(run_dir), "--num-cpus", "2", "--quiet"]
    for setting in settings:
        command += ["--set", setting]
    driver = subprocess.Popen(
        command, cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            progress = all_reports(run_dir)
            finished = [name for name, lines in progress.items() if len(lines) == 3]
            started = [name for name, lines in progress.items() if 0 < len(lines) < 3]
            if finished and started:
                break
            if driver.poll() is not None:
                pytest.fail(f"the search ended before it was killed: {driver.communicate()[1]}")
            time.sleep(0.2)
        else:
            pytest.fail("the search never got one trial finished and another started")
    finally:
        _kill_process_group_and_ray(driver, ray_dir)
    before = all_reports(run_dir)
    done_before = {name: lines for name, lines in before.items() if len(lines) == 3}
    assert not (run_dir / "results.json").exists()

    # Resuming against other data is refused, naming the data and --force.
    other = tmp_path / "other"
    import shutil

    shutil.copytree(shapes_data, other)
    next((other / "train").rglob("*.png")).unlink()
    refused = subprocess.run(
        [sys.executable, "-m", "cli", "tune", "--resume", str(run_dir), "--data", str(other)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "not the data the search started on" in refused.stderr and "--force" in refused.stderr

    resumed = subprocess.run(
        [sys.executable, "-m", "cli", "tune", "--resume", str(run_dir), "--num-cpus", "2",
         "--quiet"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    after = all_reports(run_dir)
    for name, lines in done_before.items():
        assert after[name] == lines, f"{name} had finished but ran again"
    results = json.loads((run_dir / "results.json").read_text())
    assert len(results["trials"]) == 4
    assert all(t["status"] == "completed" for t in results["trials"])
    # The searcher came back with its state: the Optuna study was told every
    # trial's result, and no trial is left RUNNING. Trials the killed driver had
    # asked for after Tune's last checkpoint ran again as new ones; their first
    # asks are set apart as orphans (the running ones marked failed).
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from tuning.resume import ORPHAN_ATTR, ORPHANS_STUDY_ATTR

    study = optuna.load_study(
        study_name="bottletune",
        storage=JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal"))),
    )
    orphans = set(study.user_attrs.get(ORPHANS_STUDY_ATTR, []))
    states = optuna.trial.TrialState
    told = [t for t in study.trials if t.number not in orphans]
    assert all(t.state == states.COMPLETE for t in told), [(t.number, t.state) for t in told]
    assert sorted(t.value for t in told) == sorted(t["val_accuracy"] for t in results["trials"])
    for trial in study.trials:
        if trial.number in orphans:
            assert trial.state != states.RUNNING
            assert trial.state != states.FAIL or trial.user_attrs.get(ORPHAN_ATTR)
    best = tmp_path / "best.json"
    exported = subprocess.run(
        [sys.executable, "-m", "cli", "export", str(run_dir), "--out", str(best)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert json.loads(best.read_text())["trial_id"] == results["best_trial_id"]
