"""A real Ray head node started with ``ray start --head``, owned and stopped by one test.

``ray stop`` kills every Ray process of the user on the machine, including
clusters that other test runs started; so the head is started with ``--block``
in a session of its own, and stopped through that session and through the
processes whose command line names its private temp dir, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class RayHead:
    """A running head node.

    Attributes:
        address: The GCS address, host:port.
        dashboard_url: The dashboard and jobs API, or None without a dashboard.
        env: Environment for drivers and CLI calls: token authentication and
            the same Python as the tests first on PATH.
        temp_dir: The head's private session root.
    """

    address: str
    dashboard_url: str | None
    env: dict[str, str]
    temp_dir: Path


@contextlib.contextmanager
def ray_head(
    temp_dir: Path,
    *,
    num_cpus: int = 2,
    dashboard: bool = True,
    extra_env: dict[str, str] | None = None,
    start_timeout_s: float = 180.0,
) -> Iterator[RayHead]:
    """Starts a single-node cluster on 127.0.0.1 with token authentication, and stops it.

    Every port Ray would otherwise take by default (10001, 8265, 52365...) is
    a free one, so the head does not collide with another Ray on the machine.
    """
    bin_dir = str(Path(sys.executable).parent)
    env = dict(
        os.environ,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        # Ray's processes and the jobs' drivers find this venv's python first.
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # everything on 127.0.0.1
        # On SIGTERM, stop at once instead of draining the node for Ray Serve.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        **(extra_env or {}),
    )
    address = f"127.0.0.1:{free_port()}"
    dashboard_port = free_port()
    command = [
        RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        f"--port={address.rsplit(':', 1)[1]}", f"--num-cpus={num_cpus}", "--num-gpus=0",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
    ]  # fmt: skip
    if dashboard:
        command += ["--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
    else:
        command += ["--include-dashboard=false"]
    log = (temp_dir / "ray-start.log").open("w")
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        head = RayHead(
            address=address,
            dashboard_url=f"http://127.0.0.1:{dashboard_port}" if dashboard else None,
            env=env,
            temp_dir=temp_dir,
        )
        _wait_until_up(head, process, start_timeout_s)
        yield head
    finally:
        _stop(process, temp_dir)
        log.close()


def _wait_until_up(head: RayHead, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    session_ready = head.temp_dir / "session_latest"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited ({process.returncode}):\n{_start_log(head)}")
        if session_ready.exists() and (head.dashboard_url is None or _dashboard_up(head)):
            return
        time.sleep(1.0)
    raise TimeoutError(f"the head was not up after {timeout_s:.0f} s:\n{_start_log(head)}")


def _dashboard_up(head: RayHead) -> bool:
    request = urllib.request.Request(
        f"{head.dashboard_url}/api/version",
        headers={"Authorization": f"Bearer {head.env['RAY_AUTH_TOKEN']}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _start_log(head: RayHead) -> str:
    return (head.temp_dir / "ray-start.log").read_text()[-4000:]


def _stop(process: subprocess.Popen[bytes], temp_dir: Path) -> None:
    """SIGTERM to the blocking ``ray start`` (it stops its node), then its whole session."""
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    for pid in processes_using(temp_dir):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def processes_using(temp_dir: Path) -> list[int]:
    """Processes whose command line contains this head's private temp dir (Linux)."""
    marker = str(temp_dir).encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            command_line = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        # The dir itself or a path inside it, not a sibling that shares its prefix.
        if (marker + b"/" in command_line or marker + b"\0" in command_line) and int(
            entry.name
        ) != os.getpid():
            found.append(int(entry.name))
    return found
