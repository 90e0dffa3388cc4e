"""Joining a real token-authenticated head: the opt-in, and a refusal that comes at once.

Each driver is a fresh interpreter with its own HOME, so neither Ray state
of this process nor a token file in any real home plays a part.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.ray_head import RayHead, processes_using, ray_head

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]

DRIVER = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
from cluster import TokenAuthError, connect, shutdown
try:
    info = connect(address=sys.argv[1])
except TokenAuthError as error:
    print(f"REFUSED {error}")
    sys.exit(3)
print(f"JOINED {info.resources.get('CPU', 0):g} CPUs")
shutdown(info)
"""

REFUSAL_WITHIN_S = 15.0
"""Generous: Ray alone retries a refused token for about 20 s; a pre-flight takes well under 1."""


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    temp_dir = tmp_path_factory.mktemp("rt")
    with ray_head(temp_dir, num_cpus=1, dashboard=False) as running:
        yield running
    assert not processes_using(temp_dir), "the head left processes behind"


def run_driver(
    head: RayHead, home: Path, **settings: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Runs DRIVER against the head with HOME at ``home``, no RAY_AUTH_* but ``settings``."""
    env = {k: v for k, v in head.env.items() if not k.startswith("RAY_AUTH_")}
    env.update(HOME=str(home), **settings)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, head.address],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return result, time.monotonic() - started


@pytest.mark.parametrize("where", ["environment", "token-file"])
def test_a_driver_with_the_token_but_no_mode_joins_and_says_so(
    head: RayHead, tmp_path: Path, where: str
) -> None:
    token = head.env["RAY_AUTH_TOKEN"]
    if where == "environment":
        result, _ = run_driver(head, tmp_path, RAY_AUTH_TOKEN=token)
        source = "the token comes from RAY_AUTH_TOKEN"
    else:
        # What `ray start` leaves behind: the token in ~/.ray/auth_token.
        token_file = tmp_path / ".ray" / "auth_token"
        token_file.parent.mkdir()
        token_file.write_text(token + "\n")
        result, _ = run_driver(head, tmp_path)
        source = f"the token comes from {token_file}"
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "JOINED 1 CPUs" in result.stdout
    opt_in = [line for line in output.splitlines() if line.startswith("INFO cluster.auth:")]
    assert len(opt_in) == 1, output
    assert head.address in opt_in[0] and "RAY_AUTH_MODE=token" in opt_in[0]
    assert source in opt_in[0]
    assert token not in output


@pytest.mark.parametrize("token", ["wrong", "none"])
def test_a_refused_driver_is_told_at_once_what_to_set(
    head: RayHead, tmp_path: Path, token: str
) -> None:
    settings = {"RAY_AUTH_TOKEN": "f" * 64} if token == "wrong" else {}
    result, elapsed = run_driver(head, tmp_path, **settings)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert elapsed < REFUSAL_WITHIN_S, f"refused after {elapsed:.1f} s:\n{output}"
    refusal = next(line for line in result.stdout.splitlines() if line.startswith("REFUSED"))
    assert f"the Ray cluster at {head.address} " in refusal
    assert "RAY_AUTH_MODE=token" in refusal and "RAY_AUTH_TOKEN" in refusal
    assert "InvalidAuthToken" not in output  # no round of Ray's retries before it
    assert head.env["RAY_AUTH_TOKEN"] not in output


def test_the_cli_prints_a_refusal_as_one_line(
    head: RayHead, tmp_path: Path, shapes_data: Path
) -> None:
    """The reported case, through ``bottletune tune --address``: exit 2 and one line."""
    env = {k: v for k, v in head.env.items() if not k.startswith("RAY_AUTH_")}
    env.update(HOME=str(tmp_path), RAY_AUTH_TOKEN="f" * 64)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "cli", "tune", "--data", str(shapes_data),
         "--out", str(tmp_path / "search"), "--address", head.address],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors == [
        f"bottletune tune: error: the Ray cluster at {head.address} refused this driver's "
        "authentication token (from RAY_AUTH_TOKEN): set RAY_AUTH_TOKEN to the cluster's token "
        f"or write it to {tmp_path / '.ray' / 'auth_token'} (or to a file named by "
        "RAY_AUTH_TOKEN_PATH), and keep RAY_AUTH_MODE=token"
    ], result.stderr
    assert elapsed < REFUSAL_WITHIN_S + 15, f"refused after {elapsed:.1f} s"  # + TF's import
