"""Unit tests for tuning.export: the best trial of a run directory, written and read back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.hyperparameters import Hyperparameters
from tuning.export import EXPORT_VERSION, BestConfig, ExportError, best_config, export_best
from tuning.run_dir import (
    RESULTS_FILE,
    BuildSite,
    CacheSummary,
    ClusterSummary,
    DatasetSummary,
    SearchSettings,
    SearchSummary,
    TrialSummary,
)

FINGERPRINT = "3f1c9a0b7d2e"
CLASS_NAMES = ["cats", "dogs"]

# The best trial sits in the middle so that "first" or "last" would pick wrongly.
TRIAL_SETTINGS: list[dict[str, Any]] = [
    {
        "trial_id": "a1b2c_00000",
        "status": "stopped_early",
        "epochs": 2,
        "val_accuracy": 0.625,
        "searched": {"dropout": 0.1, "l2": 1e-5, "unfreeze_blocks": 0, "dense_units": 128},
    },
    {
        "trial_id": "a1b2c_00001",
        "status": "completed",
        "epochs": 6,
        "val_accuracy": 0.875,
        "searched": {
            "dropout": 0.35,
            "l2": 2.5e-4,
            "unfreeze_blocks": 2,
            "augmentation": 0.6,
            "head_learning_rate": 3e-3,
            "finetune_learning_rate": 5e-5,
            "dense_units": 512,
        },
    },
    {
        "trial_id": "a1b2c_00002",
        "status": "error",
        "epochs": 0,
        "val_accuracy": None,
        "searched": {"dropout": 0.6, "l2": 1e-3, "unfreeze_blocks": 1, "dense_units": 256},
    },
]
BEST = TRIAL_SETTINGS[1]


def trial_summary(settings: dict[str, Any], run_dir: Path) -> TrialSummary:
    """One trial of results.json, as the search's summarize_trial builds it."""
    epochs = settings["epochs"]
    history = [
        {
            "training_iteration": epoch,
            "phase": 1 if epoch <= 3 else 2,
            "val_accuracy": settings["val_accuracy"],
            "val_loss": 0.4,
            "loss": 0.3,
        }
        for epoch in range(1, epochs + 1)
    ]
    return TrialSummary(
        trial_id=settings["trial_id"],
        status=settings["status"],
        epochs=epochs,
        val_accuracy=settings["val_accuracy"],
        val_loss=0.4 if epochs else None,
        hyperparameters=Hyperparameters.from_mapping(settings["searched"]),
        searched=settings["searched"],
        history=history,
        path=str(run_dir / "trials" / settings["trial_id"]),
        error="RuntimeError: out of memory" if settings["status"] == "error" else None,
    )


def search_summary(run_dir: Path, best_trial_id: str = BEST["trial_id"]) -> SearchSummary:
    return SearchSummary(
        metric="val_accuracy",
        mode="max",
        seconds=42.5,
        dataset=DatasetSummary(
            path="/data/cats-and-dogs",
            fingerprint=FINGERPRINT,
            layout="split",
            class_names=tuple(CLASS_NAMES),
            counts={"train": 40, "validation": 16, "test": 8},
        ),
        search=SearchSettings(
            backbone="vgg16",
            weights="none",
            weights_identity="random-init-seed-7",
            image_size=48,
            seed=7,
            head_epochs=3,
            max_epochs=6,
            validation_fraction=0.25,
            augmentation_views=4,
            feature_dtype="float16",
        ),
        cache=CacheSummary(
            dir=str(run_dir / "cache"),
            hits=["vgg16-48px-block5_pool-float16-0a1b"],
            misses=["vgg16-48px-block4_pool-float16-2c3d"],
            built_by=BuildSite(pid=4242, node="10.0.0.7", gpu_ids=["0"]),
        ),
        cluster=ClusterSummary(address="10.0.0.7:6379", nodes=["10.0.0.7", "10.0.0.8"]),
        best_trial_id=best_trial_id,
        trials=[trial_summary(settings, run_dir) for settings in TRIAL_SETTINGS],
    )


def results_document(run_dir: Path, best_trial_id: str = BEST["trial_id"]) -> dict[str, Any]:
    """A results.json as the search writes it: the typed summary, as a dict."""
    return search_summary(run_dir, best_trial_id).to_dict()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "run"
    (directory / "trials").mkdir(parents=True)
    (directory / "config.yaml").write_text("seed: 7\n")
    (directory / RESULTS_FILE).write_text(json.dumps(results_document(directory), indent=2))
    return directory


def exported_dict(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": EXPORT_VERSION,
        "hyperparameters": Hyperparameters(dropout=0.3, unfreeze_blocks=1).to_dict(),
        "backbone": "vgg16",
        "weights": "imagenet",
        "image_size": 150,
        "seed": 0,
        "epochs": 5,
        "head_epochs": 3,
        "validation_fraction": 0.2,
        "dataset_fingerprint": FINGERPRINT,
        "class_names": CLASS_NAMES,
        "metric": "val_accuracy",
        "value": 0.9,
        "trial_id": "t_00003",
        "max_epochs": 10,
        "weights_identity": "imagenet",
        "cache_dir": "/tmp/cache",
        "augmentation_views": 4,
        "feature_dtype": "float16",
        "fresh_cuts": [],
    }
    data.update(changes)
    return data


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


# best_config


def test_best_config_picks_the_best_trial_with_its_epochs_and_hyperparameters(
    run_dir: Path,
) -> None:
    config = best_config(run_dir)

    assert config.trial_id == BEST["trial_id"]
    assert config.epochs == BEST["epochs"]
    assert config.value == BEST["val_accuracy"]
    assert config.metric == "val_accuracy"
    expected = Hyperparameters.from_mapping(BEST["searched"])
    assert config.hyperparameters == expected
    # Searched values and the defaults of the rest, e.g. momentum and pooling.
    assert config.hyperparameters.unfreeze_blocks == 2
    assert config.hyperparameters.finetune_learning_rate == 5e-5
    assert config.hyperparameters.momentum == Hyperparameters().momentum
    assert config.hyperparameters.pooling == Hyperparameters().pooling


def test_best_config_carries_the_search_and_dataset_settings(run_dir: Path) -> None:
    config = best_config(run_dir)

    assert (config.backbone, config.weights, config.image_size) == ("vgg16", "none", 48)
    assert (config.seed, config.head_epochs, config.validation_fraction) == (7, 3, 0.25)
    assert config.dataset_fingerprint == FINGERPRINT
    assert config.class_names == tuple(CLASS_NAMES)
    assert config.max_epochs == 6
    assert config.weights_identity == "random-init-seed-7"
    assert config.cache_dir == str(run_dir / "cache")


def test_best_config_follows_best_trial_id(tmp_path: Path) -> None:
    # The id in results.json decides, even for the trial that ASHA stopped early.
    early = TRIAL_SETTINGS[0]
    run = tmp_path / "run"
    run.mkdir()
    write_json(run / RESULTS_FILE, results_document(run, best_trial_id=early["trial_id"]))

    config = best_config(run)

    assert config.trial_id == early["trial_id"]
    assert config.epochs == early["epochs"]
    assert config.hyperparameters == Hyperparameters.from_mapping(early["searched"])


def test_a_summary_reads_back_as_written(run_dir: Path) -> None:
    summary = search_summary(run_dir)

    again = SearchSummary.read(run_dir)

    assert again == summary
    assert again.best.trial_id == BEST["trial_id"]
    assert json.loads(json.dumps(summary.to_dict())) == summary.to_dict()


def test_a_results_file_from_before_the_cache_settings_reads_with_defaults(
    run_dir: Path,
) -> None:
    document = results_document(run_dir)
    for key in ("augmentation_views", "feature_dtype"):
        del document["search"][key]
    del document["cluster"]
    write_json(run_dir / RESULTS_FILE, document)

    config = best_config(run_dir)

    assert (config.augmentation_views, config.feature_dtype) == (8, "float32")


def test_a_mistyped_trial_field_names_the_file_and_the_key(run_dir: Path) -> None:
    document = results_document(run_dir)
    document["trials"][1]["epochs"] = "six"
    write_json(run_dir / RESULTS_FILE, document)

    with pytest.raises(ExportError) as caught:
        best_config(run_dir)

    assert str(run_dir / RESULTS_FILE) in str(caught.value)
    assert "trials[1]: epochs='six'" in str(caught.value)


def test_missing_results_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ExportError) as caught:
        best_config(tmp_path)

    assert str(tmp_path / RESULTS_FILE) in str(caught.value)


def test_garbled_results_file_names_the_path(run_dir: Path) -> None:
    (run_dir / RESULTS_FILE).write_text('{"metric": "val_accuracy", "trials": [')

    with pytest.raises(ExportError) as caught:
        best_config(run_dir)

    assert str(run_dir / RESULTS_FILE) in str(caught.value)


def _unknown_best_trial(run_dir: Path) -> Any:
    return results_document(run_dir, best_trial_id="zzz_99999")


@pytest.mark.parametrize(
    "make_document",
    [lambda run_dir: [], lambda run_dir: {"metric": "val_accuracy"}, _unknown_best_trial],
    ids=["list", "missing-keys", "unknown-best-trial"],
)
def test_results_of_the_wrong_shape_name_the_path(
    run_dir: Path, make_document: Callable[[Path], Any]
) -> None:
    write_json(run_dir / RESULTS_FILE, make_document(run_dir))

    with pytest.raises(ExportError) as caught:
        best_config(run_dir)

    assert str(run_dir / RESULTS_FILE) in str(caught.value)


# export_best


def test_export_best_writes_json_that_reads_back(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported" / "best.json"

    config = export_best(run_dir, out)

    assert config == best_config(run_dir)
    data = json.loads(out.read_text())
    assert data["version"] == EXPORT_VERSION
    assert data["trial_id"] == BEST["trial_id"]
    assert data["hyperparameters"] == Hyperparameters.from_mapping(BEST["searched"]).to_dict()
    assert BestConfig.read(out) == config


def test_export_best_never_overwrites_unless_forced(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "best.json"
    out.write_text("keep me\n")

    with pytest.raises(FileExistsError) as caught:
        export_best(run_dir, out)

    assert str(out) in str(caught.value)
    assert out.read_text() == "keep me\n"

    config = export_best(run_dir, out, force=True)

    assert BestConfig.read(out) == config


def test_export_best_of_a_non_run_directory_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "best.json"

    with pytest.raises(ExportError, match=RESULTS_FILE):
        export_best(tmp_path / "not-a-run", out)

    assert not out.exists()


# BestConfig.read


def test_an_export_without_cache_settings_gets_the_old_defaults(tmp_path: Path) -> None:
    data = exported_dict()
    del data["augmentation_views"], data["feature_dtype"]
    config = BestConfig.read(write_json(tmp_path / "best.json", data))
    assert (config.augmentation_views, config.feature_dtype) == (8, "float32")


def test_read_round_trips_to_dict(tmp_path: Path) -> None:
    path = write_json(tmp_path / "best.json", exported_dict())

    config = BestConfig.read(path)

    assert config.to_dict() == exported_dict()
    assert config.hyperparameters.unfreeze_blocks == 1
    assert config.class_names == tuple(CLASS_NAMES)


def test_read_lists_every_missing_key(tmp_path: Path) -> None:
    data = exported_dict()
    del data["epochs"], data["dataset_fingerprint"]
    path = write_json(tmp_path / "best.json", data)

    with pytest.raises(ExportError) as caught:
        BestConfig.read(path)

    message = str(caught.value)
    assert str(path) in message
    assert "epochs" in message and "dataset_fingerprint" in message
    assert "trial_id" not in message


def test_read_names_an_unknown_hyperparameter(tmp_path: Path) -> None:
    hyperparameters = dict(Hyperparameters().to_dict(), learning_rat=0.1)
    path = write_json(tmp_path / "best.json", exported_dict(hyperparameters=hyperparameters))

    with pytest.raises(ExportError) as caught:
        BestConfig.read(path)

    assert str(path) in str(caught.value)
    assert "learning_rat" in str(caught.value)


def test_read_names_an_invalid_hyperparameter_value(tmp_path: Path) -> None:
    hyperparameters = dict(Hyperparameters().to_dict(), dropout=1.5)
    path = write_json(tmp_path / "best.json", exported_dict(hyperparameters=hyperparameters))

    with pytest.raises(ExportError) as caught:
        BestConfig.read(path)

    assert str(path) in str(caught.value)
    assert "dropout=1.5" in str(caught.value)


@pytest.mark.parametrize("text", ["not json at all", "[1, 2, 3]"], ids=["garbled", "list"])
def test_read_rejects_files_that_are_not_a_json_object(tmp_path: Path, text: str) -> None:
    path = tmp_path / "best.json"
    path.write_text(text)

    with pytest.raises(ExportError) as caught:
        BestConfig.read(path)

    assert str(path) in str(caught.value)


def test_read_of_a_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ExportError) as caught:
        BestConfig.read(tmp_path / "nowhere.json")

    assert str(tmp_path / "nowhere.json") in str(caught.value)


def test_read_names_a_non_numeric_setting(tmp_path: Path) -> None:
    path = write_json(tmp_path / "best.json", exported_dict(image_size="big"))

    with pytest.raises(ExportError) as caught:
        BestConfig.read(path)

    assert str(path) in str(caught.value)
    assert "image_size" in str(caught.value)
