"""Unit tests for the bottletune command, run as ``python -m cli`` in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAVY_MODULES = ("tensorflow", "keras", "ray", "optuna")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=REPO_ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def file_bytes(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_help_lists_the_commands() -> None:
    result = run_cli("--help")

    assert result.returncode == 0, result.stderr
    for command in ("tune", "check-config", "export", "train", "evaluate", "predict"):
        assert command in result.stdout
    assert "make-demo-data" in result.stdout


def test_tune_help_mentions_the_key_options() -> None:
    result = run_cli("tune", "--help")

    assert result.returncode == 0, result.stderr
    for option in ("--data", "--out", "--config", "--set", "--address"):
        assert option in result.stdout


def test_parser_and_check_config_import_no_heavy_library() -> None:
    code = f"""
import contextlib, io, json, sys
from cli.main import build_parser, main

parser = build_parser()
with contextlib.redirect_stdout(io.StringIO()) as shown:
    try:
        parser.parse_args(["tune", "--help"])
    except SystemExit as stop:
        assert stop.code == 0, stop.code
assert "--address" in shown.getvalue()
args = parser.parse_args(
    ["tune", "--data", "d", "--out", "o", "--config", "demo", "--set", "seed=1",
     "--address", "auto"]
)
assert (args.command, args.overrides, args.address) == ("tune", ["seed=1"], "auto")
after_parser = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)
with contextlib.redirect_stdout(io.StringIO()):
    code = main(["check-config", "--config", "demo"])
assert code == 0, code
after_check = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)
print(json.dumps({{"parser": after_parser, "check-config": after_check}}))
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
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert imported == {"parser": [], "check-config": []}


def test_check_config_unknown_set_key_is_a_one_line_error() -> None:
    result = run_cli("check-config", "--set", "nope=1")

    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bottletune check-config: error:")
    assert "'nope'" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_check_config_bad_value_is_a_one_line_error() -> None:
    result = run_cli("check-config", "--config", "demo", "--set", "sampler=nope")

    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert "sampler='nope'" in lines[0]


def test_check_config_prints_the_resolved_demo_config() -> None:
    result = run_cli("check-config", "--config", "demo", "--set", "seed=5")

    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["config"]["image_size"] == 48
    assert printed["config"]["weights"] == "none"
    assert printed["config"]["seed"] == 5
    assert printed["space"], "the resolved search space is missing"
    assert "image_size: 48" in result.stdout


def test_make_demo_data_writes_splits_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "demo"

    made = run_cli("make-demo-data", str(out), "--classes", "2", "--per-class", "3", "--size", "32")

    assert made.returncode == 0, made.stderr
    assert sorted(path.name for path in out.iterdir()) == ["test", "train", "validation"]
    for split in ("train", "validation", "test"):
        class_dirs = sorted((out / split).iterdir())
        assert len(class_dirs) == 2
        assert all(any(class_dir.iterdir()) for class_dir in class_dirs)
    assert sum(1 for _ in (out / "train").rglob("*.*")) == 2 * 3
    before = file_bytes(out)

    again = run_cli("make-demo-data", str(out), "--classes", "2", "--per-class", "3")

    assert again.returncode == 2
    lines = error_lines(again)
    assert len(lines) == 1, again.stderr
    assert str(out) in lines[0]
    assert file_bytes(out) == before


def test_make_demo_data_draws_the_shapes_asked_for(tmp_path: Path) -> None:
    from core.demo_data import SHAPES

    out = tmp_path / "demo"
    made = run_cli(
        "make-demo-data",
        str(out),
        "--shapes",
        "ring,star",
        "--per-class",
        "2",
        "--size",
        "32",
        "--random-colours",
        "--variation",
        "0.5",
    )
    assert made.returncode == 0, made.stderr
    assert sorted(path.name for path in (out / "train").iterdir()) == ["ring", "star"]

    bad = run_cli("make-demo-data", str(tmp_path / "bad"), "--shapes", "ring,blob")
    assert bad.returncode == 2
    assert "'blob'" in error_lines(bad)[0]
    too_much = run_cli("make-demo-data", str(tmp_path / "bad"), "--variation", "1.5")
    assert too_much.returncode == 2
    assert "variation" in error_lines(too_much)[0]
    assert not (tmp_path / "bad").exists()
    # The help lists the generator's shapes, in its order.
    assert ",".join(SHAPES) in "".join(run_cli("make-demo-data", "--help").stdout.split())


def test_export_of_a_non_run_directory_names_results_json(tmp_path: Path) -> None:
    not_a_run = tmp_path / "somewhere"
    not_a_run.mkdir()
    out = tmp_path / "best.json"

    result = run_cli("export", str(not_a_run), "--out", str(out))

    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert str(not_a_run / "results.json") in lines[0]
    assert not out.exists()


def test_predict_prints_the_true_class_where_the_folder_names_one(tmp_path: Path) -> None:
    import keras
    from PIL import Image

    from core.inference import ModelInfo, folder_class

    size, classes = 8, ("circle", "square")
    inputs = keras.Input((size, size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(len(classes), activation="softmax")(pooled))
    model_path = tmp_path / "model" / "model.keras"
    model_path.parent.mkdir()
    model.save(model_path)
    info = ModelInfo(class_names=classes, image_size=size, backbone="vgg16")
    (model_path.parent / "model_info.json").write_text(json.dumps(info.to_dict()))
    images = [
        tmp_path / "test" / "square" / "a.png",  # a class folder: its class is printed
        tmp_path / "dogs" / "b.png",  # a folder, but no class of the model's
        tmp_path / "c.png",
    ]
    for image in images:
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), (200, 30, 30)).save(image)

    # Without the tests' own TF_CPP_MIN_LOG_LEVEL: the command quiets TensorFlow itself.
    result = subprocess.run(
        [sys.executable, "-m", "cli", "predict", "--model", str(model_path), *map(str, images)],
        cwd=REPO_ROOT,
        env={name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    # C++ lines logged once TensorFlow has set up its logging are hidden; the
    # ones it writes while it loads cannot be (see core.runtime).
    assert "cuInit" not in result.stderr
    assert "cpu_feature_guard" not in result.stderr
    rows = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [row[0] for row in rows] == [str(image) for image in images]
    assert [len(row) for row in rows] == [4, 3, 3]
    assert rows[0][3] == "true: square"
    for row in rows:
        assert row[1] in classes
        assert 0.5 <= float(row[2]) <= 1.0
    assert folder_class("square/a.png", classes) == "square"
    assert folder_class(tmp_path / "a.png", classes) is None
