"""Screenshots of the Ray dashboard while a bottletune search runs (headless Chromium).

By default it runs a small demo search (32 px synthetic shapes, random-init
VGG16) with the dashboard on a free port, waits until trials are running, takes
the screenshots, then stops the search:

    .venv/bin/python docs/dashboard_screenshot.py

Or it photographs a dashboard that is already up (the token is the cluster's,
``RAY_AUTH_TOKEN`` by default; none for a cluster without authentication):

    .venv/bin/python docs/dashboard_screenshot.py --url http://127.0.0.1:8265 --job 01000000

Needs ``chromium`` (Debian: ``apt-get install chromium``). The dashboard asks
for the cluster's token in a cookie, which Chromium's ``--screenshot`` flag
cannot set, so the browser is driven through the DevTools protocol (over
aiohttp, which Ray's dashboard already depends on).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "img"
WINDOW = (1400, 900)
TOKEN_COOKIE = "ray-authentication-token"  # what the dashboard's login page sets
PAGES = {
    # name -> (URL fragment, text the page shows once it has rendered its data)
    "dashboard": ("#/jobs/{job}", "RUNNING"),
    "dashboard-actors": ("#/actors", "ImplicitFunc"),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get_json(url: str, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
        return json.loads(r.read().decode())


def wait_for_trials(
    url: str, token: str | None, timeout_s: float, search: subprocess.Popen[bytes] | None = None
) -> str:
    """Waits until two trial actors are alive at once; returns their job's id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if search is not None and search.poll() is not None:
            raise RuntimeError(f"the search ended (exit status {search.returncode}) too early")
        with contextlib.suppress(OSError, ValueError, KeyError):
            actors = get_json(f"{url}/logical/actors", token)["data"]["actors"].values()
            alive = [
                a for a in actors if a["className"] == "ImplicitFunc" and a["state"] == "ALIVE"
            ]
            if len(alive) >= 2:
                return str(alive[0]["jobId"])
        time.sleep(1)
    raise TimeoutError(f"no running trial showed in {url} within {timeout_s:.0f} s")


# The demo preset's space without augmentation, whose extra feature views take
# longer to compute than the whole search on 2 cores.
DEMO_SPACE = """
dropout: {type: float, low: 0.0, high: 0.7}
unfreeze_blocks: {type: int, low: 0, high: 2}
augmentation: 0.0
head_learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
finetune_learning_rate:
  {type: float, low: 1.0e-5, high: 1.0e-3, log: true, when: "unfreeze_blocks > 0"}
dense_units: {type: categorical, choices: [128, 256, 512]}
"""


@contextlib.contextmanager
def demo_search(workdir: Path) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """Runs a small search with the dashboard on; yields (dashboard URL, token, process)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_TMPDIR=str(workdir / "ray"))
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    (workdir / "ray").mkdir()
    cli = [sys.executable, "-m", "cli"]
    data = workdir / "data"
    subprocess.run(
        [*cli, "make-demo-data", str(data), "--classes", "3", "--per-class", "12", "--size", "32"],
        cwd=REPO, env=env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    port = free_port()
    (workdir / "space.yaml").write_text(DEMO_SPACE)
    settings = {
        "image_size": 32, "num_samples": 6, "max_epochs": 8, "space": workdir / "space.yaml",
        "cache_dir": workdir / "cache", "include_dashboard": "true", "dashboard_port": port,
    }  # fmt: skip
    command = [
        *cli, "tune", "--data", str(data), "--out", str(workdir / "run"), "--config", "demo",
        "--num-cpus", "2", *[p for k, v in settings.items() for p in ("--set", f"{k}={v}")],
    ]  # fmt: skip
    log = (workdir / "tune.log").open("wb")
    search = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield f"http://127.0.0.1:{port}", env["RAY_AUTH_TOKEN"], search
    except Exception:
        log.flush()
        print((workdir / "tune.log").read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGINT)  # Ctrl-C: Tune stops, Ray shuts down
            try:
                search.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(search.pid, signal.SIGKILL)
                search.wait(timeout=30)
        log.close()


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[str]:
    """A headless Chromium; yields the DevTools HTTP address."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise SystemExit("chromium not found; on Debian: apt-get install -y chromium")
    browser = subprocess.Popen(
        [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--user-data-dir={profile}",
            "--remote-debugging-port=0", "about:blank",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or browser.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.2)
        yield f"127.0.0.1:{port_file.read_text().split()[0]}"
    finally:
        browser.terminate()
        browser.wait(timeout=30)


async def screenshot(
    devtools: str, url: str, token: str | None, ready_text: str, out: Path, timeout_s: float
) -> bool:
    """Opens ``url`` with the token cookie, waits for ``ready_text``, saves a PNG.

    Returns:
        Whether ``ready_text`` showed before the timeout (the PNG is saved either way).
    """
    import aiohttp

    page = get_json(f"http://{devtools}/json/list", None)
    target = next(t for t in page if t["type"] == "page")["webSocketDebuggerUrl"]
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(target, max_msg_size=0) as ws,
    ):
        counter = 0

        async def call(method: str, **params: Any) -> dict[str, Any]:
            nonlocal counter
            counter += 1
            await ws.send_json({"id": counter, "method": method, "params": params})
            while True:
                message = await ws.receive_json()
                if message.get("id") == counter:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return dict(message.get("result", {}))

        width, height = WINDOW
        await call(
            "Emulation.setDeviceMetricsOverride",
            width=width, height=height, deviceScaleFactor=1, mobile=False,
        )  # fmt: skip
        if token:
            await call("Network.enable")
            await call("Network.setCookie", name=TOKEN_COOKIE, value=token, url=url)
        await call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        ready = False
        while not ready and time.monotonic() < deadline:
            await asyncio.sleep(1)
            shown = await call(
                "Runtime.evaluate", expression="document.body ? document.body.innerText : ''"
            )
            ready = ready_text in str(shown.get("result", {}).get("value", ""))
        await asyncio.sleep(2)  # let charts and tables finish drawing
        image = await call("Page.captureScreenshot", format="png")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(image["data"]))
        return ready


def take(url: str, token: str | None, job: str, out_dir: Path, timeout_s: float) -> list[Path]:
    written = []
    with (
        tempfile.TemporaryDirectory(prefix="bt-chromium-") as profile,
        chromium(Path(profile)) as devtools,
    ):
        for name, (fragment, ready_text) in PAGES.items():
            out = out_dir / f"{name}.png"
            page_url = f"{url}/{fragment.format(job=job)}"
            ready = asyncio.run(screenshot(devtools, page_url, token, ready_text, out, timeout_s))
            status = "" if ready else f" (warning: {ready_text!r} never showed)"
            print(f"{page_url} -> {out}{status}")
            written.append(out)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshots of the Ray dashboard.")
    parser.add_argument("--url", help="dashboard of a running search (default: run a demo)")
    parser.add_argument("--token", default=os.environ.get("RAY_AUTH_TOKEN"), help="with --url")
    parser.add_argument("--job", default="01000000", help="job id of the search, with --url")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="where PNGs go")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for trials")
    args = parser.parse_args(argv)
    if args.url:
        take(args.url.rstrip("/"), args.token, args.job, args.out_dir, 60)
        return 0
    with (
        tempfile.TemporaryDirectory(prefix="bt-shot-", dir="/tmp") as workdir,
        demo_search(Path(workdir)) as (url, token, search),
    ):
        job = wait_for_trials(url, token, args.timeout, search)
        take(url, token, job, args.out_dir, 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
