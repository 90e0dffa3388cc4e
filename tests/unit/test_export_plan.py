"""Export and final training follow the search's cache plan: its views, its fresh cuts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from core.hyperparameters import Hyperparameters
from core.plan import CachePlan, PlannedEntry
from tests.unit.test_export import search_summary
from tuning.export import best_config
from tuning.run_dir import PLAN_FILE, RESULTS_FILE, FinalMetrics


def plan(views: int, fresh: list[tuple[str, float]]) -> CachePlan:
    rows = [PlannedEntry("block5_pool", 0.0, "plain", 0, 10, 1, 1, 0.0)]
    rows += [PlannedEntry("block5_pool", 0.5, "views", views, 10, 0, views, 1.0)]
    rows += [PlannedEntry(cut, s, "fresh", 0, 0, 0, 0, 0.0) for cut, s in fresh]
    return CachePlan(
        backbone="vgg16", image_size=48, dtype="float16", train_images=40,
        validation_images=16, views_per_strength=views, entries=tuple(rows),
        images_nbytes=40 * 48 * 48 * 3, budget_bytes=10**9, budget_source="test",
        object_store_bytes=0, disk_free_bytes=0, seconds_per_image=0.0,
    )  # fmt: skip


def write_run(tmp_path: Path, hparams: Hyperparameters, cache_plan: CachePlan | None) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    summary = search_summary(run_dir)
    best = summary.best
    trials = [
        dataclasses.replace(t, hyperparameters=hparams) if t.trial_id == best.trial_id else t
        for t in summary.trials
    ]
    summary = dataclasses.replace(summary, trials=trials)
    (run_dir / RESULTS_FILE).write_text(json.dumps(summary.to_dict()))
    if cache_plan is not None:
        cache_plan.write(run_dir / PLAN_FILE)
    return run_dir


def test_the_best_trial_trains_again_on_the_plans_views_and_fresh_cuts(tmp_path: Path) -> None:
    hparams = Hyperparameters(unfreeze_blocks=1, augmentation=0.5)
    run_dir = write_run(tmp_path, hparams, plan(2, [("block4_pool", 0.5), ("block4_pool", 1.0)]))
    config = best_config(run_dir)
    # The search asked for 4 views; its plan kept 2, and block4_pool augmented fresh.
    assert config.augmentation_views == 2 and config.fresh_cuts == ("block4_pool",)
    request = config.feature_request()
    assert request.views == 2 and request.view_cuts == ("block5_pool",)
    assert config.augments_fresh


def test_a_run_without_a_plan_exports_as_before(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, Hyperparameters(unfreeze_blocks=1, augmentation=0.5), None)
    config = best_config(run_dir)
    assert config.augmentation_views == 4 and config.fresh_cuts == ()
    assert config.feature_request().view_cuts is None and not config.augments_fresh


def write_best(
    tmp_path: Path,
    data: Path,
    hparams: Hyperparameters,
    epochs: int,
    head_epochs: int,
    **changes: Any,
) -> Path:
    """A best.json for 32 px shapes with random-init weights, as ``bottletune export`` writes."""
    from core.backbones import weights_identity
    from core.data import scan_dataset
    from tests.unit.test_export import exported_dict

    index = scan_dataset(data, 0.2, 0)
    best = tmp_path / "best.json"
    exported = exported_dict(
        hyperparameters=hparams.to_dict(),
        weights="none",
        weights_identity=weights_identity("none", 0),
        image_size=32,
        epochs=epochs,
        max_epochs=epochs,
        head_epochs=head_epochs,
        dataset_fingerprint=index.fingerprint,
        class_names=list(index.class_names),
        **changes,
    )
    best.write_text(json.dumps(exported))
    return best


def test_final_training_augments_fresh_where_the_search_did(
    shapes_data: Path, tmp_path: Path
) -> None:
    from core.features import FeatureCache
    from tuning.final import train_final

    hparams = Hyperparameters(unfreeze_blocks=1, augmentation=0.5, dense_units=16, batch_size=8)
    best = write_best(
        tmp_path, shapes_data, hparams, 2, 1, augmentation_views=2, fresh_cuts=["block4_pool"]
    )
    cache_dir = tmp_path / "cache"
    metrics = train_final(
        best, shapes_data, tmp_path / "model", cache_dir=cache_dir, progress=False
    )
    assert metrics.epochs == 2 and [row["phase"] for row in metrics.history] == [1, 2]
    views = {
        (b["cut"], b["view"]) for b in FeatureCache(cache_dir).builds() if b["view"] is not None
    }
    # Views for the head's cut only; block4_pool's phase 2 augmented the images afresh.
    assert views == {("block5_pool", 0), ("block5_pool", 1)}


@pytest.mark.parametrize("epoch_weights", ["best", "last"])
def test_final_training_saves_the_epoch_it_was_asked_for(
    epoch_weights: str, shapes_data: Path, tmp_path: Path
) -> None:
    from tuning.final import train_final

    # Measured here: validation accuracy 0.5, 0.5, 0.5, 0.75, 0.5, 0.5, so the best
    # epoch's model and the last one's score apart.
    hparams = Hyperparameters(
        unfreeze_blocks=1,
        dense_units=16,
        batch_size=8,
        head_learning_rate=1e-3,
        finetune_learning_rate=0.03,
    )
    best = write_best(tmp_path, shapes_data, hparams, 6, 2, cache_dir=str(tmp_path / "cache"))
    metrics = train_final(
        best, shapes_data, tmp_path / "model", progress=False, epoch_weights=epoch_weights
    )
    accuracies = [row["val_accuracy"] for row in metrics.history]
    # best: the first epoch of the highest validation accuracy, as restore_best_weights.
    expected = accuracies.index(max(accuracies)) + 1 if epoch_weights == "best" else 6
    assert (metrics.kept_epoch, metrics.epoch_weights, metrics.epochs) == (
        expected,
        epoch_weights,
        6,
    )
    # The saved model, loaded back and run on images, is that epoch's model.
    assert metrics.validation_accuracy == pytest.approx(accuracies[expected - 1], abs=1e-6)
    assert metrics.trained_validation_accuracy == accuracies[expected - 1]
    assert FinalMetrics.read(tmp_path / "model").kept_epoch == expected


def test_final_training_refuses_an_unknown_epoch_choice(tmp_path: Path) -> None:
    from tuning.final import train_final

    with pytest.raises(ValueError, match="epoch_weights='first'"):
        train_final(tmp_path / "best.json", tmp_path, tmp_path / "model", epoch_weights="first")
