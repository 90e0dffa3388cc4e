"""The recipe's two phases on cached features, with a real (random-init) VGG16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.backbones import get_backbone
from core.data import load_images, scan_dataset
from core.features import FeatureBundle, FeatureCache, FeatureRequest
from core.hyperparameters import Hyperparameters
from core.training import RecipeTrainer, TrainingSetup, view_batches

CUTS = ["block5_pool", "block4_pool", "block3_pool"]


@pytest.fixture(scope="module")
def bundle(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> FeatureBundle:
    cache = FeatureCache(tmp_path_factory.mktemp("cache"))
    request = FeatureRequest(
        backbone="vgg16",
        weights="none",
        image_size=32,
        cuts=tuple(CUTS),
        augmentations=(0.5, 1.0),
        views=2,
        seed=0,
    )
    return cache.ensure(scan_dataset(shapes_data), request, progress=False)


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
    expected_blocks = {f"block{5 - i}" for i in range(depth)}
    names = backbone_layer_names(trainer.finetune_model)
    assert names and {name.split("_")[0] for name in names} == expected_blocks


@pytest.mark.parametrize("augmentation", [0.0, 0.5])
def test_finetuning_never_runs_the_frozen_blocks(
    bundle: FeatureBundle, augmentation: float
) -> None:
    """Poison every frozen layer with NaN: if any of them ran, the loss would be NaN.

    With augmentation too: augmented trials train on cached augmented views.
    """
    hparams = Hyperparameters(unfreeze_blocks=2, augmentation=augmentation)
    trainer = RecipeTrainer(hparams, setup(epochs=3), bundle)
    trainer.train_epoch()
    trainer._ensure_finetune()
    assert trainer.backbone_model is not None
    cut_index = [layer.name for layer in trainer.backbone_model.layers].index("block3_pool")
    for layer in trainer.backbone_model.layers[: cut_index + 1]:
        for weight in layer.weights:
            weight.assign(np.full(weight.shape, np.nan, dtype="float32"))
    reports = [trainer.train_epoch(), trainer.train_epoch()]
    assert [report["phase"] for report in reports] == [2, 2]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["val_loss"]) for r in reports)


def test_augmented_trials_train_on_views_of_their_strength_and_validate_on_plain_features(
    bundle: FeatureBundle,
) -> None:
    trainer = RecipeTrainer(Hyperparameters(augmentation=1.0), setup(epochs=1), bundle)
    used: list[np.ndarray] = []
    original = trainer.head.train_on_batch

    def spy(x, y, **kwargs):  # type: ignore[no-untyped-def]
        used.append(np.array(x))
        return original(x, y, **kwargs)

    validated: list[np.ndarray] = []
    original_test = trainer.head.test_on_batch

    def validation_spy(x, y, **kwargs):  # type: ignore[no-untyped-def]
        validated.append(np.array(x))
        return original_test(x, y, **kwargs)

    trainer.head.train_on_batch = spy  # type: ignore[method-assign]
    trainer.head.test_on_batch = validation_spy  # type: ignore[method-assign]
    trainer.train_epoch()
    # Validation is never augmented: the plain cached features, every image once.
    np.testing.assert_array_equal(
        np.concatenate(validated), np.asarray(bundle.features("block5_pool", "validation"))
    )
    seen = np.concatenate(used)
    views = bundle.views_of("block5_pool", 1.0)
    plain = bundle.features("block5_pool", "train")
    flat = seen.reshape(len(seen), -1)
    candidates = [np.asarray(v, dtype="float32").reshape(len(v), -1) for v in views]
    from_views = [any(np.any(np.all(c == row, axis=1)) for c in candidates) for row in flat]
    assert all(from_views), "an augmented trial trained on something other than its views"
    assert not np.any(np.all(plain.reshape(len(plain), -1)[:, None] == flat[None], axis=2))


def test_view_batches_draw_one_view_per_image_afresh_each_epoch() -> None:
    views = tuple(np.full((10, 2), float(v)) + np.arange(10)[:, None] * 10 for v in range(4))
    labels = np.arange(10)

    def drawn(seed: int) -> dict[int, float]:
        result: dict[int, float] = {}
        for x, y in view_batches(views, labels, 3, seed=seed):
            for row, label in zip(x, y, strict=True):
                result[int(label)] = row[0] - 10 * int(label)
        return result

    first, second = drawn(0), drawn(1)
    assert sorted(first) == list(range(10)), "every image once per epoch"
    assert set(first.values()) <= {0.0, 1.0, 2.0, 3.0}
    assert first != second, "two epochs drew the same views"
    assert drawn(0) == first, "an epoch's draw is not reproducible from its seed"


def test_exported_model_on_images_matches_the_feature_path(
    bundle: FeatureBundle, shapes_data: Path
) -> None:
    trainer = RecipeTrainer(Hyperparameters(unfreeze_blocks=1), setup(), bundle)
    trainer.train_epoch()
    trainer.train_epoch()
    images = load_images(scan_dataset(shapes_data).splits["validation"], 32).images
    from_images = trainer.inference_model().predict(images.astype("float32"), verbose=0)
    from_features = trainer.finetune_model.predict(  # type: ignore[union-attr]
        bundle.features("block4_pool", "validation"), verbose=0
    )
    np.testing.assert_allclose(from_images, from_features, rtol=1e-4, atol=1e-5)


def test_restored_weights_give_the_model_of_that_epoch_in_either_phase(
    bundle: FeatureBundle, shapes_data: Path
) -> None:
    trainer = RecipeTrainer(Hyperparameters(unfreeze_blocks=1), setup(epochs=4), bundle)
    images = load_images(scan_dataset(shapes_data).splits["validation"], 32).images
    images = images.astype("float32")

    def predictions() -> np.ndarray:
        return trainer.inference_model().predict(images, verbose=0)

    trainer.train_epoch()  # phase 1: the head only
    after_head, head_weights = predictions(), trainer.weights()
    trainer.train_epoch()  # phase 2 changes block 5 in place
    after_two, two_weights = predictions(), trainer.weights()
    trainer.train_epoch()
    trainer.train_epoch()
    assert head_weights.backbone is None and two_weights.backbone is not None
    assert (head_weights.epoch, two_weights.epoch) == (1, 2)
    assert not np.allclose(predictions(), after_two, atol=1e-6), "training changed nothing"

    trainer.restore_weights(two_weights)
    np.testing.assert_allclose(predictions(), after_two, rtol=1e-5, atol=1e-6)
    # Back to phase 1's weights: the head's, and block 5 as the backbone was built.
    trainer.restore_weights(head_weights)
    np.testing.assert_allclose(predictions(), after_head, rtol=1e-5, atol=1e-6)
    assert trainer.epoch == 4


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
        resumed.finetune_model.predict(features, verbose=0),  # type: ignore[union-attr]
        first.finetune_model.predict(features, verbose=0),  # type: ignore[union-attr]
        rtol=1e-6,
    )
    assert resumed.train_epoch()["epoch"] == 3


def test_multiclass_head_uses_softmax(three_class_data: Path, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    request = FeatureRequest(backbone="vgg16", weights="none", image_size=32, cuts=("block5_pool",))
    bundle3 = cache.ensure(scan_dataset(three_class_data), request, progress=False)
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


@pytest.mark.parametrize("depth", [0, 1])
def test_reported_validation_metrics_cover_the_whole_split(
    bundle: FeatureBundle, depth: int
) -> None:
    """Batches of 5 over 12 images (phase 2): the report averages them by sample."""
    trainer = RecipeTrainer(
        Hyperparameters(batch_size=5, unfreeze_blocks=depth), setup(epochs=2), bundle
    )
    trainer.train_epoch()
    report = trainer.train_epoch()
    model = trainer.finetune_model if depth else trainer.head
    assert model is not None
    features = bundle.features(trainer.cut, "validation")
    targets = bundle.labels["validation"].astype("float32").reshape(-1, 1)
    loss, accuracy = model.evaluate(features, targets, batch_size=64, verbose=0)
    assert report["val_loss"] == pytest.approx(loss, rel=1e-4)
    assert report["val_accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_augmented_checkpoint_keeps_the_sgd_state(bundle: FeatureBundle, tmp_path: Path) -> None:
    hparams = Hyperparameters(unfreeze_blocks=1, augmentation=0.5)
    first = RecipeTrainer(hparams, setup(epochs=3), bundle)
    first.train_epoch()
    first.train_epoch()
    first.save(tmp_path)
    resumed = RecipeTrainer(hparams, setup(epochs=3), bundle)
    resumed.restore(tmp_path)
    assert first.finetune_model is not None and resumed.finetune_model is not None
    before = first.finetune_model.optimizer
    after = resumed.finetune_model.optimizer
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


FLOAT16_PROBABILITY_TOLERANCE = 1e-3
"""How far a model trained on float16 features may predict from one trained on float32."""


def test_float16_features_train_a_model_that_predicts_like_float32(
    shapes_data: Path, tmp_path: Path
) -> None:
    """The same trial (fine-tuning one block, augmented) on float16 and on float32 entries.

    Both final models run on the same validation images. Measured here: at most
    about 4e-5 apart in probability, the same accuracy every epoch; the stated
    tolerance is 1e-3 in probability.
    """
    index = scan_dataset(shapes_data)
    cache = FeatureCache(tmp_path / "cache")
    images = load_images(index.splits["validation"], 32).images
    hparams = Hyperparameters(
        unfreeze_blocks=1, augmentation=0.5, dropout=0.0,
        head_learning_rate=1e-2, finetune_learning_rate=1e-2,
    )  # fmt: skip
    predictions, reports = {}, {}
    for dtype in ("float32", "float16"):
        request = FeatureRequest(
            backbone="vgg16", weights="none", image_size=32,
            cuts=("block5_pool", "block4_pool"), augmentations=(0.5,), views=2, dtype=dtype,
        )  # fmt: skip
        features = cache.ensure(index, request, progress=False)
        assert features.features("block4_pool", "train").dtype == np.dtype(dtype)
        trainer = RecipeTrainer(hparams, setup(epochs=3), features)
        reports[dtype] = [trainer.train_epoch() for _ in range(3)]
        predictions[dtype] = trainer.inference_model().predict(images, verbose=0)

    assert [r["phase"] for r in reports["float16"]] == [1, 2, 2]
    difference = np.abs(predictions["float16"] - predictions["float32"]).max()
    assert difference <= FLOAT16_PROBABILITY_TOLERANCE, difference
    # Accuracies may differ by an image whose probability sits at the boundary.
    one_image = 1 / len(images)
    for half, full in zip(reports["float16"], reports["float32"], strict=True):
        assert abs(half["val_accuracy"] - full["val_accuracy"]) <= one_image + 1e-9
