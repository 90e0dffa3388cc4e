"""The recipe's two phases on cached features, with a real (random-init) VGG16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.backbones import get_backbone
from core.data import scan_dataset
from core.features import FeatureBundle, FeatureCache
from core.hyperparameters import Hyperparameters
from core.training import RecipeTrainer, TrainingSetup

CUTS = ["block5_pool", "block4_pool", "block3_pool"]


@pytest.fixture(scope="module")
def bundle(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> FeatureBundle:
    cache = FeatureCache(tmp_path_factory.mktemp("cache"))
    return cache.ensure(
        scan_dataset(shapes_data),
        backbone="vgg16",
        weights="none",
        image_size=32,
        cuts=CUTS,
        include_images=True,
        seed=0,
        progress=False,
    )


def setup(epochs: int = 2, head_epochs: int = 1) -> TrainingSetup:
    return TrainingSetup("vgg16", "none", 32, epochs=epochs, head_epochs=head_epochs, seed=0)


def backbone_layer_names(model) -> set[str]:  # type: ignore[no-untyped-def]
    names: set[str] = set()
    for layer in model.layers:
        if hasattr(layer, "layers"):
            names |= backbone_layer_names(layer)
        names.add(layer.name)
    return {name for name in names if name.startswith("block")}


def test_head_only_trial_trains_on_cached_features_and_reports_each_epoch(
    bundle: FeatureBundle,
) -> None:
    trainer = RecipeTrainer(Hyperparameters(dropout=0.2), setup(epochs=3), bundle)
    reports = [trainer.train_epoch() for _ in range(3)]
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    assert {r["phase"] for r in reports} == {1}
    assert all(0.0 <= r["val_accuracy"] <= 1.0 and np.isfinite(r["val_loss"]) for r in reports)
    assert trainer.backbone_model is None, "a head-only trial built the backbone"
    assert trainer.done
    with pytest.raises(RuntimeError):
        trainer.train_epoch()


@pytest.mark.parametrize("depth", [1, 2])
def test_finetune_model_holds_only_the_layers_above_the_cut(
    bundle: FeatureBundle, depth: int
) -> None:
    trainer = RecipeTrainer(Hyperparameters(unfreeze_blocks=depth), setup(), bundle)
    trainer.train_epoch()
    trainer.train_epoch()
    assert trainer.feature_model is trainer.train_model
    expected_blocks = {f"block{5 - i}" for i in range(depth)}
    names = backbone_layer_names(trainer.feature_model)
    assert names and {name.split("_")[0] for name in names} == expected_blocks


def test_finetune_without_augmentation_never_runs_the_frozen_blocks(
    bundle: FeatureBundle,
) -> None:
    """Poison every frozen layer with NaN: if any of them ran, the loss would be NaN."""
    trainer = RecipeTrainer(Hyperparameters(unfreeze_blocks=2), setup(), bundle)
    trainer.train_epoch()
    train_model, _ = trainer._ensure_finetune()
    assert trainer.backbone_model is not None
    cut_index = [layer.name for layer in trainer.backbone_model.layers].index("block3_pool")
    for layer in trainer.backbone_model.layers[: cut_index + 1]:
        for weight in layer.weights:
            weight.assign(np.full(weight.shape, np.nan, dtype="float32"))
    report = trainer.train_epoch()
    assert report["phase"] == 2
    assert np.isfinite(report["loss"]) and np.isfinite(report["val_loss"])


def test_augmented_finetune_runs_frozen_blocks_on_images(bundle: FeatureBundle) -> None:
    hparams = Hyperparameters(unfreeze_blocks=1, augmentation=1.0)
    trainer = RecipeTrainer(hparams, setup(), bundle)
    trainer.train_epoch()
    report = trainer.train_epoch()
    assert report["phase"] == 2 and np.isfinite(report["loss"])
    assert trainer.train_model is not trainer.feature_model
    layer_names = {layer.name for layer in trainer.train_model.layers}
    assert "augmentation" in layer_names and "preprocess" in layer_names
    assert "block1_conv1" in backbone_layer_names(trainer.train_model)
    assert "block1_conv1" not in backbone_layer_names(trainer.feature_model)
    assert all(not trainer.backbone_model.get_layer(n).trainable for n in ("block4_conv3",))
    assert trainer.backbone_model.get_layer("block5_conv3").trainable


def test_exported_model_on_images_matches_the_feature_path(bundle: FeatureBundle) -> None:
    trainer = RecipeTrainer(Hyperparameters(unfreeze_blocks=1), setup(), bundle)
    trainer.train_epoch()
    trainer.train_epoch()
    assert bundle.images is not None
    from_images = trainer.inference_model().predict(
        bundle.images["validation"].astype("float32"), verbose=0
    )
    from_features = trainer.feature_model.predict(  # type: ignore[union-attr]
        bundle.features("block4_pool", "validation"), verbose=0
    )
    np.testing.assert_allclose(from_images, from_features, rtol=1e-4, atol=1e-5)


def test_checkpoint_restores_weights_and_progress(bundle: FeatureBundle, tmp_path: Path) -> None:
    first = RecipeTrainer(Hyperparameters(unfreeze_blocks=1), setup(epochs=3), bundle)
    first.train_epoch()
    first.train_epoch()
    first.save(tmp_path)
    resumed = RecipeTrainer(Hyperparameters(unfreeze_blocks=1), setup(epochs=3), bundle)
    resumed.restore(tmp_path)
    assert resumed.epoch == 2 and len(resumed.history) == 2
    features = bundle.features("block4_pool", "validation")
    np.testing.assert_allclose(
        resumed.feature_model.predict(features, verbose=0),  # type: ignore[union-attr]
        first.feature_model.predict(features, verbose=0),  # type: ignore[union-attr]
        rtol=1e-6,
    )
    assert resumed.train_epoch()["epoch"] == 3


def test_multiclass_head_uses_softmax(three_class_data: Path, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    bundle3 = cache.ensure(
        scan_dataset(three_class_data),
        backbone="vgg16",
        weights="none",
        image_size=32,
        cuts=["block5_pool"],
        progress=False,
    )
    trainer = RecipeTrainer(Hyperparameters(), setup(epochs=1), bundle3)
    trainer.train_epoch()
    output = trainer.head.get_layer("head_output")
    assert output.units == 3 and output.activation.__name__ == "softmax"


def test_weight_decay_adds_regularization_losses(bundle: FeatureBundle) -> None:
    plain = RecipeTrainer(Hyperparameters(), setup(epochs=1), bundle)
    decayed = RecipeTrainer(Hyperparameters(l2=0.1, l1=0.01), setup(epochs=1), bundle)
    assert not plain.head.losses
    assert len(decayed.head.losses) == 2  # both dense kernels
    assert all(float(loss) > 0 for loss in decayed.head.losses)


def test_depth_above_the_backbone_is_rejected(bundle: FeatureBundle) -> None:
    blocks = get_backbone("vgg16").num_blocks
    with pytest.raises(ValueError, match="unfreeze_blocks=6"):
        RecipeTrainer(Hyperparameters(unfreeze_blocks=blocks + 1), setup(), bundle)


def test_reported_validation_metrics_cover_the_whole_split(bundle: FeatureBundle) -> None:
    trainer = RecipeTrainer(Hyperparameters(batch_size=5), setup(epochs=1), bundle)
    report = trainer.train_epoch()
    features = bundle.features("block5_pool", "validation")
    targets = bundle.labels["validation"].astype("float32").reshape(-1, 1)
    loss, accuracy = trainer.head.evaluate(features, targets, batch_size=64, verbose=0)
    assert report["val_loss"] == pytest.approx(loss, rel=1e-5)
    assert report["val_accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_augmented_checkpoint_keeps_the_sgd_state(bundle: FeatureBundle, tmp_path: Path) -> None:
    hparams = Hyperparameters(unfreeze_blocks=1, augmentation=0.5)
    first = RecipeTrainer(hparams, setup(epochs=3), bundle)
    first.train_epoch()
    first.train_epoch()
    first.save(tmp_path)
    resumed = RecipeTrainer(hparams, setup(epochs=3), bundle)
    resumed.restore(tmp_path)
    assert first.train_model is not None and resumed.train_model is not None
    before = first.train_model.optimizer
    after = resumed.train_model.optimizer
    assert int(after.iterations) == int(before.iterations) > 0
    for saved, loaded in zip(before.variables, after.variables, strict=True):
        np.testing.assert_allclose(np.asarray(loaded), np.asarray(saved))


def test_phase_switch_follows_the_planned_schedule_not_the_epochs_trained() -> None:
    """A trial ASHA stopped after 2 of 10 planned epochs was still in phase 1."""
    stopped = TrainingSetup("vgg16", "none", 32, epochs=2, head_epochs=3, planned_epochs=10)
    assert stopped.phase_one_epochs == 3
    short_plan = TrainingSetup("vgg16", "none", 32, epochs=2, head_epochs=3)
    assert short_plan.phase_one_epochs == 1


def test_augmentation_layers_draw_independent_random_numbers() -> None:
    from core.layers import build_augmentation

    augmentation = build_augmentation(1.0, seed=7)
    assert augmentation is not None
    seeds = [layer.seed for layer in augmentation.layers]
    assert len(set(seeds)) == len(seeds)
