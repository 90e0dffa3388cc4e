"""Architecture rules: which layers may import Ray, Optuna and TensorFlow, and who calls ray.init.

Each import check runs in a fresh interpreter, since this test process may already
have imported anything.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

LIGHT_CORE = "core.backbones, core.data, core.hyperparameters, core.features, core.demo_data"
KERAS_CORE = ("core.training", "core.model", "core.layers", "core.inference")
NOT_CALLING_RAY_INIT = ("core", "search_spaces", "tuning", "cli")
RAY_INIT = re.compile(r"\bray\.init\s*\(")
PACKAGES = ("core", "search_spaces", "tuning", "cluster", "cli")
MAY_IMPORT_RAY = (
    "cluster/",
    "tuning/trainable.py",
    "tuning/tuner.py",
    "tuning/resumable_search.py",  # the tuner's searcher, imported by the tuner alone
    # STYLE: search_spaces holds the one adapter to Ray Tune's sampling functions.
    "search_spaces/adapters.py",
)
MAY_IMPORT_RAY_PRIVATE = ("cluster/",)


def ray_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import of ray or a ray submodule, at any depth of the code."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name == "ray" or name.startswith("ray.")]
    return found


def allowed(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(
        path == prefix or (prefix.endswith("/") and path.startswith(prefix)) for prefix in prefixes
    )


def imported_after(statement: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` (or their submodules) are loaded after ``statement`` in a child."""
    code = (
        f"import json, sys\n{statement}\n"
        f"loaded = [m for m in {modules!r} if any(n == m or n.startswith(m + '.') "
        "for n in sys.modules)]\n"
        "print(json.dumps(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("statement", "forbidden"),
    [
        (f"import {LIGHT_CORE}", ("ray", "tensorflow", "keras")),
        ("import search_spaces", ("ray", "optuna", "tensorflow", "keras")),
        ("import tuning.config", ("ray", "tensorflow", "keras")),
    ],
    ids=["light-core", "search_spaces", "tuning.config"],
)
def test_light_modules_import_no_heavy_library(statement: str, forbidden: tuple[str, ...]) -> None:
    assert imported_after(statement, forbidden) == []


def test_no_core_module_imports_ray() -> None:
    # Every module of core, so that a new one is covered; keras ones included.
    statement = (
        "import importlib, pkgutil, core\n"
        "names = sorted(m.name for m in pkgutil.iter_modules(core.__path__, 'core.'))\n"
        f"missing = set({KERAS_CORE!r}) - set(names)\n"
        "assert not missing, missing\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "assert 'keras' in sys.modules  # the keras modules really were imported"
    )

    assert imported_after(statement, ("ray",)) == []


def test_the_import_check_detects_a_heavy_import() -> None:
    # Guards the helper above against always answering "nothing loaded".
    assert imported_after("import yaml", ("yaml", "ray")) == ["yaml"]


def test_only_cluster_calls_ray_init() -> None:
    offenders = []
    checked = 0
    for package in NOT_CALLING_RAY_INIT:
        files = sorted((REPO_ROOT / package).rglob("*.py"))
        assert files, f"no Python files under {package}/"
        for path in files:
            checked += 1
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if RAY_INIT.search(line):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")

    assert checked > 0
    assert offenders == []


def test_the_ray_init_pattern_finds_the_cluster_call() -> None:
    cluster_sources = "\n".join(path.read_text() for path in (REPO_ROOT / "cluster").rglob("*.py"))

    assert RAY_INIT.search(cluster_sources)
    assert not RAY_INIT.search("ray.initialize_something()")


def test_only_cluster_the_trainable_and_the_tuner_import_ray() -> None:
    offenders = []
    files = [path for package in PACKAGES for path in sorted((REPO_ROOT / package).rglob("*.py"))]
    assert len(files) > 20
    for path in files:
        relative = path.relative_to(REPO_ROOT).as_posix()
        for line, module in ray_imports(path.read_text()):
            private = module == "ray._private" or module.startswith("ray._private.")
            if not allowed(relative, MAY_IMPORT_RAY) or (
                private and not allowed(relative, MAY_IMPORT_RAY_PRIVATE)
            ):
                offenders.append(f"{relative}:{line}: {module}")

    assert offenders == []


def test_the_ray_import_checker_finds_imports_at_any_depth() -> None:
    source = (
        "import os, rayon\n"
        "def f():\n"
        "    import ray\n"
        "    from ray import tune\n"
        "    from ray._private import worker\n"
        "    from .ray import x\n"
    )

    modules = [module for _, module in ray_imports(source)]

    assert modules == ["ray", "ray", "ray.tune", "ray._private", "ray._private.worker"]
    assert allowed("cluster/runtime.py", MAY_IMPORT_RAY)
    assert not allowed("tuning/search.py", MAY_IMPORT_RAY)
    assert not allowed("tuning/tuner.py", MAY_IMPORT_RAY_PRIVATE)
