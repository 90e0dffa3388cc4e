"""Unit tests for ``bottletune cache ls|rm|warm``, through the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cli.main import main
from core.cache_store import EntryStore

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAVY_MODULES = ("tensorflow", "keras", "ray", "optuna")
PLAIN = "vgg16-32px-block5_pool-float16-aaaaaaaaaaaaaaaaaaaa"
VIEW = "vgg16-32px-block4_pool-aug0.5-view1-float16-bbbbbbbbbbbbbbbbbbbb"


def run_cli(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if home is not None:
        env["HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def feature_meta(cut: str, shape: list[int], augmentation: float, view: int | None) -> dict:
    """A meta.json as core.features.FeatureCache.store writes it."""
    return {
        "key": {
            "backbone": "vgg16",
            "weights": "none-seed0",
            "image_size": 32,
            "dataset": "abc",
            "cut": cut,
            "dtype": "float16",
            "augmentation": augmentation,
            "view": view,
        },
        "name": "ignored",
        "splits": ["train"],
        "shapes": {"train": shape},
        "dtype": "float16",
        "class_names": ["a", "b"],
        "created": "2026-11-01T10:00:00+0000",
        "seconds": 1.5,
    }


def populate(cache_dir: Path) -> EntryStore:
    store = EntryStore(cache_dir)
    store.write(
        PLAIN,
        {"train_features": np.zeros((6, 1, 1, 512), "float16"), "train_labels": np.zeros(6)},
        feature_meta("block5_pool", [6, 1, 1, 512], 0.0, None),
    )
    store.write(
        VIEW,
        {"train_features": np.zeros((6, 2, 2, 512), "float16")},
        feature_meta("block4_pool", [6, 2, 2, 512], 0.5, 1),
    )
    return store


def test_ls_prints_a_table_of_entries(tmp_path: Path) -> None:
    store = populate(tmp_path / "cache")
    sizes = {entry.name: entry.total_bytes for entry in store.entries()}

    result = run_cli("cache", "ls", "--cache-dir", str(tmp_path / "cache"))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "key",
        "backbone",
        "cut",
        "view",
        "shape",
        "dtype",
        "size",
        "created",
    ]
    plain = next(line for line in lines if line.startswith(PLAIN)).split()
    assert plain == [PLAIN, "vgg16", "block5_pool", "-", "6x1x1x512", "float16"] + plain[6:]
    assert plain[-1] == "2026-11-01T10:00:00+0000"
    view = next(line for line in lines if line.startswith(VIEW))
    assert "aug0.5 view 1" in view and "6x2x2x512" in view
    assert f"{sizes[VIEW] / 1024:.1f} KiB" in view
    assert lines[-1].startswith("2 entries")


def test_ls_json_and_defensive_reading(tmp_path: Path) -> None:
    store = populate(tmp_path)
    store.write("legacy-entry", {"x": np.ones(3)}, {})  # no key, shapes or dtype

    result = run_cli("cache", "ls", "--cache-dir", str(tmp_path), "--json")

    assert result.returncode == 0, result.stderr
    rows = {row["key"]: row for row in json.loads(result.stdout)}
    assert sorted(rows) == sorted([PLAIN, VIEW, "legacy-entry"])
    assert rows[VIEW]["view"] == 1 and rows[VIEW]["augmentation"] == 0.5
    assert rows[PLAIN]["shape"] == [6, 1, 1, 512]
    assert rows["legacy-entry"]["backbone"] is None
    sizes = {entry.name: entry.total_bytes for entry in store.entries()}
    assert {name: row["bytes"] for name, row in rows.items()} == sizes
    assert rows[PLAIN]["meta"]["class_names"] == ["a", "b"]
    table = run_cli("cache", "ls", "--cache-dir", str(tmp_path))
    legacy = next(line for line in table.stdout.splitlines() if line.startswith("legacy-entry"))
    assert legacy.split()[1:6] == ["-", "-", "-", "-", "-"]


def test_ls_defaults_to_the_configs_cache_dir(tmp_path: Path) -> None:
    populate(tmp_path / "home" / ".cache" / "bottletune")
    populate(tmp_path / "configured")
    EntryStore(tmp_path / "configured").remove(VIEW)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"cache_dir": str(tmp_path / "configured")}))

    default = run_cli("cache", "ls", "--json", home=tmp_path / "home")
    configured = run_cli("cache", "ls", "--json", "--config", str(config))

    assert default.returncode == 0, default.stderr
    assert sorted(row["key"] for row in json.loads(default.stdout)) == sorted([PLAIN, VIEW])
    assert [row["key"] for row in json.loads(configured.stdout)] == [PLAIN]


def test_ls_of_an_empty_cache_says_so(tmp_path: Path) -> None:
    result = run_cli("cache", "ls", "--cache-dir", str(tmp_path / "none"))

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"no cached entries in {tmp_path / 'none'}"
    assert not (tmp_path / "none").exists()


def test_rm_removes_named_entries_and_rejects_unknown_ones(tmp_path: Path) -> None:
    store = populate(tmp_path)

    unknown = run_cli("cache", "rm", PLAIN, "no-such-entry", "--cache-dir", str(tmp_path))

    assert unknown.returncode == 2
    lines = [line for line in unknown.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "'no-such-entry'" in lines[0], unknown.stderr
    assert store.has(PLAIN), "nothing may be removed when one key is unknown"

    removed = run_cli("cache", "rm", PLAIN, "--cache-dir", str(tmp_path))

    assert removed.returncode == 0, removed.stderr
    assert f"removed {PLAIN}" in removed.stdout
    assert [entry.name for entry in store.entries()] == [VIEW]
    neither = run_cli("cache", "rm", "--cache-dir", str(tmp_path))
    assert neither.returncode == 2 and "--all" in neither.stderr


def test_rm_all_removes_entries_only(tmp_path: Path) -> None:
    store = populate(tmp_path)
    (tmp_path / "builds.jsonl").write_text('{"name": "x"}\n')
    (tmp_path / "mine.txt").write_text("keep")

    result = run_cli("cache", "rm", "--all", "--cache-dir", str(tmp_path))

    assert result.returncode == 0, result.stderr
    assert store.entries() == []
    assert (tmp_path / "builds.jsonl").read_text() == '{"name": "x"}\n'
    assert (tmp_path / "mine.txt").read_text() == "keep"
    assert "removed 2 entries" in result.stdout


def test_ls_and_rm_import_no_heavy_library(tmp_path: Path) -> None:
    populate(tmp_path)
    code = f"""
import contextlib, io, json, sys
from cli.main import main

with contextlib.redirect_stdout(io.StringIO()) as shown:
    assert main(["cache", "ls", "--cache-dir", {str(tmp_path)!r}]) == 0
    assert main(["cache", "rm", {PLAIN!r}, "--cache-dir", {str(tmp_path)!r}]) == 0
assert {PLAIN!r} in shown.getvalue()
print(json.dumps(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)))
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_warm_builds_what_a_search_needs_once(
    shapes_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    settings = {"backbone": "vgg16", "weights": "none", "image_size": 32, "space": "head-only"}
    config.write_text(yaml.safe_dump({**settings, "cache_dir": str(tmp_path / "cache")}))
    arguments = ["cache", "warm", "--data", str(shapes_data), "--config", str(config), "--quiet"]

    assert main(arguments) == 0
    first = capsys.readouterr().out
    assert main(arguments) == 0
    second = capsys.readouterr().out

    built = [line.split()[1] for line in first.splitlines() if line.startswith("built ")]
    assert built, first
    assert "0 already cached" in first
    assert f"0 built, {len(built)} already cached" in second
    listed = [entry.name for entry in EntryStore(tmp_path / "cache").entries()]
    assert listed == sorted(built)
    assert any("block5_pool" in name for name in listed)


def test_ls_and_rm_of_a_remote_cache(tmp_path: Path) -> None:
    uri = (tmp_path / "bucket").as_uri()
    EntryStore(uri, mirror_dir=tmp_path / "writer").write(
        PLAIN, {"train_features": np.zeros((6, 1, 1, 8))}, feature_meta("block5_pool", [6], 0, None)
    )
    location = ("--cache-dir", uri, "--mirror-dir", str(tmp_path / "reader"))

    listed = run_cli("cache", "ls", *location)
    removed = run_cli("cache", "rm", PLAIN, *location)

    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split()[-1] == "where"
    assert next(line for line in listed.stdout.splitlines() if PLAIN in line).endswith("remote")
    assert removed.returncode == 0, removed.stderr
    assert not (tmp_path / "bucket" / "entries" / PLAIN).exists()
    assert not EntryStore(uri, mirror_dir=tmp_path / "writer").has(PLAIN)
