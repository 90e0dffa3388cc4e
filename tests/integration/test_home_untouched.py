"""The suite leaves the user's home alone: a real local Ray writes its token under a temporary one.

``tests/conftest.py`` points HOME at a per-session temporary folder before
anything imports ray; Ray 2.60 writes ``$HOME/.ray/auth_token`` whenever a
local Ray starts and finds no token.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]

LOCAL_RAY = """
import sys
import ray

ray.init(
    address="local", num_cpus=1, include_dashboard=False,
    object_store_memory=80 * 1024 * 1024, _temp_dir=sys.argv[1],
)
ray.shutdown()
"""


def token_file_state(home: Path) -> tuple[int, int, int] | None:
    """Inode, size and modification time of ``home/.ray/auth_token`` (None if absent)."""
    try:
        found = (home / ".ray" / "auth_token").stat()
    except FileNotFoundError:
        return None
    return (found.st_ino, found.st_size, found.st_mtime_ns)


def test_a_local_ray_writes_its_token_under_the_temporary_home(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    real_home = Path(os.environ["BOTTLETUNE_TEST_REAL_HOME"])
    test_home = Path(os.environ["HOME"])
    assert test_home != real_home
    # The real home may hold a token from earlier runs: compare, never assume absence.
    real_before = token_file_state(real_home)
    # Ray's socket paths must stay under 107 characters; pytest's base temp is short.
    ray_temp_dir = tmp_path_factory.mktemp("rh")
    result = subprocess.run(
        [sys.executable, "-c", LOCAL_RAY, str(ray_temp_dir)],
        cwd=REPO_ROOT,
        env=dict(os.environ),  # as CLI children get it: HOME is the temporary one
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    token_file = test_home / ".ray" / "auth_token"
    assert token_file.is_file() and token_file.read_text().strip()
    assert token_file_state(real_home) == real_before
