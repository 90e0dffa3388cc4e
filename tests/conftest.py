"""Shared fixtures: small synthetic image sets made with Pillow, and a real Ray."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REAL_HOME_ENV = "BOTTLETUNE_TEST_REAL_HOME"
"""Where the user's home directory is while the tests run under a temporary one."""

# Every Ray this test session starts (in this process, in CLI children and in
# `ray start` heads, which all inherit the environment) writes its token to
# $HOME/.ray/auth_token when it finds none, and Ray Tune and Keras default to
# folders under $HOME too: all of that goes to a temporary home, never the
# user's. Some of those paths are worked out when a module is imported, so
# this runs before any test imports ray. A nested pytest keeps the outer
# session's temporary home and its record of the real one.
if REAL_HOME_ENV not in os.environ:
    os.environ[REAL_HOME_ENV] = os.path.expanduser("~")
    _temporary_home = tempfile.mkdtemp(prefix="bt-home-")
    os.environ["HOME"] = _temporary_home
    atexit.register(shutil.rmtree, _temporary_home, ignore_errors=True)
# The user's own token settings would make the tests join or start clusters
# with the user's credentials; each test that needs a token sets its own.
for _setting in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
    os.environ.pop(_setting, None)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Keep every Ray process of the tests (and of CLI children, which inherit the
# environment) on loopback instead of the machine's outward-facing address.
# Ray reads this when it is imported, so it is set before any test imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of drawn shapes at 32 px in the Keras layout (train/validation/test)."""
    from core.demo_data import make_demo_data

    root = tmp_path_factory.mktemp("shapes") / "data"
    make_demo_data(root, classes=2, per_class=12, size=32, seed=0)
    return root


@pytest.fixture(scope="session")
def three_class_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes (softmax head) at 32 px."""
    from core.demo_data import make_demo_data

    root = tmp_path_factory.mktemp("three") / "data"
    make_demo_data(root, classes=3, per_class=6, size=32, seed=1)
    return root


@pytest.fixture(scope="session")
def ray_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Ray's socket paths must stay under 107 characters; pytest's base temp is short.
    return tmp_path_factory.mktemp("ray")


@pytest.fixture(scope="module")
def local_ray(ray_temp_dir: Path) -> Iterator[None]:
    """A real single-node Ray with two CPUs and two fake GPUs, shared by a module's tests."""
    import ray

    ray.init(
        address="local",  # a new Ray, never one another test started with `ray start`
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024 * 1024,
        _temp_dir=str(ray_temp_dir),
    )
    try:
        yield
    finally:
        ray.shutdown()
