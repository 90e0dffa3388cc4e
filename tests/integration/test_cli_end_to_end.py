"""The user's path through the CLI: tune -> export -> train -> evaluate -> predict.

The search runs in a child process with its own embedded single-node Ray, as
``bottletune tune`` does on a laptop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.ray_head import RAY, ray_head

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def bottletune(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"bottletune {args[0]} failed:\n{result.stderr[-4000:]}"
    return result


def overrides(**settings: object) -> list[str]:
    """``--set key=value`` arguments."""
    return [part for key, value in settings.items() for part in ("--set", f"{key}={value}")]


def last_reports(trials_dir: Path) -> dict[str, tuple[float, int, dict[str, object]]]:
    """Each trial's last reported val_accuracy, epoch count and params, read from Ray's files."""
    reports = {}
    for trial_dir in trials_dir.iterdir():
        result_file = trial_dir / "result.json"
        if not result_file.is_file():
            continue
        lines = [json.loads(line) for line in result_file.read_text().splitlines() if line]
        last = lines[-1]
        params = json.loads((trial_dir / "params.json").read_text())
        reports[last["trial_id"]] = (last["val_accuracy"], last["training_iteration"], params)
    return reports


def test_tune_export_train_evaluate_predict(
    shapes_data: Path, tmp_path: Path, ray_temp_dir: Path
) -> None:
    env = dict(os.environ, RAY_TMPDIR=str(ray_temp_dir), PYTHONPATH=str(REPO))
    # bottletune itself must keep its local Ray on loopback, without the tests' help.
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    run_dir = tmp_path / "run"
    settings = overrides(
        image_size=32, num_samples=3, max_epochs=2, head_epochs=1, grace_period=1,
        include_dashboard="false", cache_dir=tmp_path / "cache",
    )  # fmt: skip
    tuned = bottletune(
        "tune", "--data", str(shapes_data), "--out", str(run_dir), "--config", "demo",
        "--num-cpus", "2", "--quiet", *settings, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert "best trial" in tuned.stdout
    cluster = json.loads((run_dir / "results.json").read_text())["cluster"]
    assert cluster["nodes"] == ["127.0.0.1"] and cluster["address"].startswith("127.0.0.1:")

    # The exported config is the best trial's, judged from Ray's own result files.
    best_json = tmp_path / "best.json"
    bottletune("export", str(run_dir), "--out", str(best_json), env=env, cwd=tmp_path)
    exported = json.loads(best_json.read_text())
    reports = last_reports(run_dir / "trials")
    assert len(reports) == 3
    best_value = max(value for value, _, _ in reports.values())
    value, epochs, params = reports[exported["trial_id"]]
    assert exported["value"] == pytest.approx(best_value) == pytest.approx(value)
    assert exported["epochs"] == epochs
    for name, searched in params.items():
        assert exported["hyperparameters"][name] == pytest.approx(searched)
    assert exported["backbone"] == "vgg16" and exported["image_size"] == 32
    assert exported["class_names"] == ["circle", "square"]

    # Exporting again over the same file is refused: nothing is overwritten silently.
    refused = subprocess.run(
        [sys.executable, "-m", "cli", "export", str(run_dir), "--out", str(best_json)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "--force" in refused.stderr

    model_dir = tmp_path / "model"
    builds = (tmp_path / "cache" / "builds.jsonl").read_text()
    bottletune(
        "train", "--config", str(best_json), "--data", str(shapes_data), "--out",
        str(model_dir), env=env, cwd=tmp_path,
    )  # fmt: skip
    # Final training found the search's cache by itself and computed nothing new.
    assert (tmp_path / "cache" / "builds.jsonl").read_text() == builds
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["epochs"] == exported["epochs"]
    # The saved model (preprocessing + backbone + head, on images) agrees with
    # the trainer's own validation on cached features.
    assert metrics["validation_accuracy"] == pytest.approx(
        metrics["trained_validation_accuracy"], abs=1e-6
    )
    assert 0.0 <= metrics["test_accuracy"] <= 1.0

    evaluated = bottletune(
        "evaluate",
        "--model",
        str(model_dir / "model.keras"),
        "--data",
        str(shapes_data),
        env=env,
        cwd=tmp_path,
    )
    assert f"test accuracy: {metrics['test_accuracy']:.4f} on 6 images" in evaluated.stdout

    images = sorted(str(p) for p in (shapes_data / "test").rglob("*.*"))[:3]
    predicted = bottletune(
        "predict", "--model", str(model_dir / "model.keras"), *images, env=env, cwd=tmp_path
    )
    lines = predicted.stdout.strip().splitlines()
    assert len(lines) == 3
    for line, image in zip(lines, images, strict=True):
        path, label, probability, true_class = line.split("\t")
        assert path == image
        assert label in ("circle", "square")
        assert 0.5 <= float(probability) <= 1.0
        # Each test image sits in its class's folder, which predict reads.
        assert true_class == f"true: {Path(image).parent.name}"


def test_tune_joins_a_running_cluster_and_leaves_it_running(
    shapes_data: Path, tmp_path: Path
) -> None:
    # Ray's socket paths must stay under 107 characters: a short folder of its own.
    temp_dir = Path(tempfile.mkdtemp(prefix="bt-head-", dir="/tmp"))
    # ray_head stops only this head (`ray stop` would stop every Ray on the machine).
    with ray_head(temp_dir, num_cpus=2, dashboard=False) as head:
        env = dict(head.env, PYTHONPATH=str(REPO))
        run_dir = tmp_path / "run"
        settings = overrides(
            image_size=32, num_samples=2, max_epochs=1, head_epochs=1, grace_period=1,
            cache_dir=tmp_path / "cache",
        )  # fmt: skip

        # A whole GPU per trial on this CPU-only cluster: refused at once, not
        # left pending, and the run directory is not created.
        refused = subprocess.run(
            [sys.executable, "-m", "cli", "tune", "--data", str(shapes_data), "--out",
             str(run_dir), "--config", "demo", "--address", head.address, "--quiet",
             *settings, "--set", "gpus_per_trial=1"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert "gpus_per_trial=1: no node has that many GPUs" in refused.stderr
        assert not run_dir.exists()

        tuned = bottletune(
            "tune", "--data", str(shapes_data), "--out", str(run_dir), "--config", "demo",
            "--address", head.address, "--quiet", *settings, env=env, cwd=tmp_path,
        )  # fmt: skip
        assert "best trial" in tuned.stdout
        results = json.loads((run_dir / "results.json").read_text())
        assert len(results["trials"]) == 2
        status = subprocess.run(
            [RAY, "status", "--address", head.address],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert status.returncode == 0 and "Active" in status.stdout, status.stderr[-2000:]
