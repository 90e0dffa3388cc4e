"""Every file of a run directory is a typed record: written, read back equal, and a bad file
is an error that names the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data import DataError
from core.records import RecordError, from_dict, to_dict
from search_spaces import load_space
from tuning.config import load_config
from tuning.run_dir import (
    CONFIG_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    SPACE_FILE,
    FinalMetrics,
    ModelInfo,
    RunDirError,
    RunManifest,
    check_new_run_dir,
    start_run_dir,
)


def test_a_new_run_directory_holds_the_config_the_space_and_the_manifest(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = load_config(overrides={"weights": "none", "image_size": 32})

    start_run_dir(run_dir, config, load_space("default"), "data", "f" * 64, "/x/trials")

    assert load_config(run_dir / CONFIG_FILE) == config
    assert (run_dir / SPACE_FILE).is_file()
    manifest = RunManifest.read(run_dir)
    assert manifest.dataset.path == str(Path("data").absolute())
    assert (manifest.dataset.fingerprint, manifest.experiment) == ("f" * 64, "/x/trials")
    assert manifest.space == load_space("default").to_dict()
    assert RunManifest.from_dict(manifest.to_dict(), "again") == manifest
    with pytest.raises(RunDirError, match="not empty"):
        check_new_run_dir(run_dir)


def test_a_manifest_without_its_dataset_names_the_file_and_the_key(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"space": {}, "experiment": "x"}))

    with pytest.raises(RunDirError) as caught:
        RunManifest.read(tmp_path)

    assert str(tmp_path / MANIFEST_FILE) in str(caught.value)
    assert "dataset" in str(caught.value)


@pytest.mark.parametrize("test_accuracy", [0.5, None], ids=["with-test", "no-test-split"])
def test_final_metrics_read_back_as_written(tmp_path: Path, test_accuracy: float | None) -> None:
    metrics = FinalMetrics(
        trained_validation_accuracy=0.75,
        validation_accuracy=0.7,
        search_value=0.8,
        epochs=2,
        history=[{"epoch": 1, "val_accuracy": 0.6}, {"epoch": 2, "val_accuracy": 0.75}],
        test_accuracy=test_accuracy,
    )

    metrics.write(tmp_path)

    written = json.loads((tmp_path / METRICS_FILE).read_text())
    assert ("test_accuracy" in written) == (test_accuracy is not None)
    assert FinalMetrics.read(tmp_path) == metrics


def test_model_info_reads_back_and_names_a_bad_key(tmp_path: Path) -> None:
    info = ModelInfo(class_names=("cat", "dog"), image_size=48, backbone="vgg16", seed=3)
    path = tmp_path / "model_info.json"
    info.write(path)

    assert ModelInfo.read(path) == info
    path.write_text(json.dumps(dict(info.to_dict(), image_size="big")))
    with pytest.raises(DataError) as caught:
        ModelInfo.read(path)
    assert str(path) in str(caught.value) and "image_size='big'" in str(caught.value)


def test_records_check_nested_types_and_unknown_keys() -> None:
    info = ModelInfo(class_names=("a", "b"), image_size=32, backbone="vgg16")
    data = to_dict(info)

    assert data["class_names"] == ["a", "b"]  # tuples are written as JSON lists
    assert from_dict(ModelInfo, data, "here") == info
    with pytest.raises(RecordError, match=r"here: class_names\[1\]=2: expected str"):
        from_dict(ModelInfo, dict(data, class_names=["a", 2]), "here")
    with pytest.raises(RecordError, match="here: unknown key"):
        from_dict(ModelInfo, dict(data, colour="red"), "here")
    with pytest.raises(RecordError, match="here: missing key.*backbone"):
        from_dict(ModelInfo, {"class_names": ["a"], "image_size": 1}, "here")
