"""``ray job submit`` of a search to a running, token-secured cluster, as on a real one.

The repository goes up as the job's working_dir (the .gitignore'd .venv and
demo data stay behind), and ``bottletune tune --address auto`` (the README's
command) runs as the job's driver on the head node, with trials on the same
node. Ray puts the working_dir first on the job's PYTHONPATH, so the uploaded
code is what runs, ahead of the bottletune installed on the node.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.ray_head import RAY, RayHead, processes_using, ray_head

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# Belt and braces next to .gitignore, which Ray's upload honours by default:
# whatever else lands in the tree, these never go up.
EXCLUDES = [".git", ".venv", "demo", "bench/results", "**/__pycache__", ".*_cache"]
MAX_PACKAGE_MIB = 20.0
JOB_INFO = """
import json, sys
from ray.job_submission import JobSubmissionClient
client = JobSubmissionClient(sys.argv[1])
info = client.get_job_info(sys.argv[2])
print(json.dumps({
    "status": info.status.value,
    "runtime_env": info.runtime_env,
    "listed": [job.submission_id for job in client.list_jobs()],
}))
"""


def ray_cli(head: RayHead, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RAY, *args], env=head.env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_job_submit_runs_a_search_and_lists_it(
    shapes_data: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A short private root: Ray's socket paths must stay under 107 characters.
    temp_dir = tmp_path_factory.mktemp("rj")
    run_dir = tmp_path / "run"
    submission_id = f"bottletune-test-{uuid.uuid4().hex[:8]}"
    with ray_head(temp_dir, num_cpus=2) as head:
        assert head.dashboard_url is not None
        settings = [
            f"--set={key}={value}"
            for key, value in {
                "image_size": 32, "num_samples": 2, "max_epochs": 2, "head_epochs": 1,
                "grace_period": 1, "max_concurrent_trials": 2,
                "cache_dir": tmp_path / "cache",
            }.items()
        ]  # fmt: skip
        started = time.monotonic()
        submitted = ray_cli(
            head,
            "job", "submit", "--address", head.dashboard_url,
            "--submission-id", submission_id,
            "--working-dir", str(REPO),
            "--runtime-env-json", json.dumps({"excludes": EXCLUDES}),
            "--",
            "bottletune", "tune", "--address", "auto", "--config", "demo",
            "--data", str(shapes_data), "--out", str(run_dir), "--quiet", *settings,
            timeout=900,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        output = submitted.stdout + submitted.stderr
        assert submitted.returncode == 0, f"job failed after {elapsed:.0f} s:\n{output[-6000:]}"
        assert f"Job '{submission_id}' succeeded" in output
        assert "best trial" in output, "the driver's output is the job's log"

        # The repository went up small: no virtualenv, no demo data, no .git.
        uploaded = re.search(r"Uploading package gcs://(_ray_pkg_\w+)\.zip", output)
        assert uploaded, output[-3000:]
        unpacked = next((temp_dir / "session_latest" / "runtime_resources").rglob(uploaded[1]))
        top_level = {path.name for path in unpacked.iterdir()}
        assert {"cli", "core", "tuning", "configs"} <= top_level
        assert not top_level & {".venv", "demo", ".git"}
        size_mib = sum(f.stat().st_size for f in unpacked.rglob("*") if f.is_file()) / 2**20
        assert size_mib < MAX_PACKAGE_MIB

        # The jobs API knows the job, its status and its uploaded working_dir.
        info = json.loads(
            subprocess.run(
                [sys.executable, "-c", JOB_INFO, head.dashboard_url, submission_id],
                env=head.env, capture_output=True, text=True, timeout=120, check=True,
            ).stdout
        )  # fmt: skip
        assert info["status"] == "SUCCEEDED"
        assert submission_id in info["listed"]
        assert info["runtime_env"]["working_dir"] == f"gcs://{uploaded[1]}.zip"
        listed = ray_cli(head, "job", "list", "--address", head.dashboard_url)
        assert listed.returncode == 0, listed.stderr[-2000:]
        assert f"submission_id='{submission_id}'" in listed.stdout

        # The jobs API refuses a client without the cluster's token.
        anonymous = dict(head.env, RAY_AUTH_MODE="disabled")
        anonymous.pop("RAY_AUTH_TOKEN")
        refused = subprocess.run(
            [RAY, "job", "list", "--address", head.dashboard_url],
            env=anonymous,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert refused.returncode != 0
        assert submission_id not in refused.stdout

    assert not processes_using(temp_dir), "the head left processes behind"
    results = json.loads((run_dir / "results.json").read_text())
    assert len(results["trials"]) == 2
    assert {trial["status"] for trial in results["trials"]} <= {"completed", "stopped_early"}
    assert results["cluster"]["nodes"] == ["127.0.0.1"]
