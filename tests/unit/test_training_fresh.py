"""Fresh on-the-fly augmentation in RecipeTrainer, with a real (random-init) VGG16 at 32 px."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.data import load_images, scan_dataset
from core.features import (
    VIEW_CHUNK,
    FeatureBundle,
    FeatureCache,
    FeatureCacheError,
    FeatureRequest,
    view_augmentation,
)
from core.hyperparameters import Hyperparameters
from core.training import RecipeTrainer, TrainingSetup, entries_for, needs_images

CUTS = ("block5_pool", "block4_pool", "block3_pool")
STRENGTH = 1.0
WHOLE_SPLIT = 64
"""A batch larger than the 24 training images: one batch, images in file order every epoch."""


@pytest.fixture(scope="module")
def with_views(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> FeatureBundle:
    """Plain features at both cuts, 2 views at strength 1 and the decoded images."""
    index = scan_dataset(shapes_data)
    request = FeatureRequest(
        backbone="vgg16", weights="none", image_size=32, cuts=CUTS,
        augmentations=(STRENGTH,), views=2, seed=0,
    )  # fmt: skip
    bundle = FeatureCache(tmp_path_factory.mktemp("cache")).ensure(index, request, progress=False)
    loaded = load_images(index.splits["train"], 32)
    np.testing.assert_array_equal(loaded.labels, bundle.labels["train"])
    bundle.images = {"train": loaded.images}
    return bundle


@pytest.fixture(scope="module")
def fresh(with_views: FeatureBundle) -> FeatureBundle:
    """The same bundle without views: augmented trials must augment the images themselves."""
    return dataclasses.replace(with_views, views={})


def setup(epochs: int = 2, head_epochs: int = 1) -> TrainingSetup:
    return TrainingSetup("vgg16", "none", 32, epochs=epochs, head_epochs=head_epochs, seed=0)


def spy_inputs(model: Any, calls: list[np.ndarray], method: str = "train_on_batch") -> None:
    """Records every x the model is stepped on (the real step still runs)."""
    original = getattr(model, method)

    def spy(x: Any, y: Any, **kwargs: Any) -> Any:
        calls.append(np.array(x))
        return original(x, y, **kwargs)

    setattr(model, method, spy)


def flat(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype="float32").reshape(len(array), -1)


def test_fresh_head_trial_sees_new_transforms_every_epoch(fresh: FeatureBundle) -> None:
    hparams = Hyperparameters(augmentation=STRENGTH, batch_size=WHOLE_SPLIT)
    trainer = RecipeTrainer(hparams, setup(epochs=2), fresh)
    assert trainer.augmentation_source(1) == "fresh"
    seen: list[np.ndarray] = []
    spy_inputs(trainer.head, seen)
    reports = [trainer.train_epoch(), trainer.train_epoch()]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["val_loss"]) for r in reports)
    first, second = flat(seen[0]), flat(seen[1])
    plain = flat(fresh.features("block5_pool", "train"))
    assert first.shape == plain.shape
    # Every image differs between the two epochs and from its unaugmented features.
    assert not np.any(np.all(np.isclose(first, second), axis=1)), "an epoch repeated a transform"
    assert not np.any(np.all(np.isclose(first, plain), axis=1)), "an image was not augmented"
    costs = trainer.epoch_costs
    assert [c["source"] for c in costs] == ["fresh", "fresh"]
    assert all(0.0 < c["fresh_seconds"] <= c["epoch_seconds"] for c in costs)


def test_fresh_transforms_without_augmentation_reproduce_the_cached_features(
    fresh: FeatureBundle,
) -> None:
    """The frozen model is the cache's network: on unaugmented images it gives the cache."""
    trainer = RecipeTrainer(Hyperparameters(augmentation=STRENGTH), setup(), fresh)
    for cut in CUTS:
        computed = trainer.frozen_model(cut).predict_on_batch(
            fresh.images["train"].astype("float32")
        )
        np.testing.assert_allclose(
            computed, fresh.features(cut, "train"), rtol=1e-4, atol=1e-4 * float(np.max(computed))
        )


def test_a_view_is_the_fresh_path_run_with_the_views_seed(with_views: FeatureBundle) -> None:
    """Views and fresh transforms differ only in which transforms they draw, not in what runs.

    The cache builds view 0 from chunks of ``VIEW_CHUNK`` images; the 24 training
    images are one chunk, so the same layers on the whole split redraw it exactly.
    """
    trainer = RecipeTrainer(Hyperparameters(augmentation=STRENGTH), setup(), with_views)
    images = with_views.images["train"].astype("float32")
    assert len(images) <= VIEW_CHUNK
    augmented = view_augmentation(STRENGTH, 0)(images, training=True)
    for cut in ("block5_pool", "block4_pool"):
        fresh_path = trainer.frozen_model(cut).predict_on_batch(np.asarray(augmented))
        cached = with_views.views_of(cut, STRENGTH)[0]
        np.testing.assert_allclose(
            fresh_path, cached, rtol=1e-4, atol=1e-4 * float(np.max(fresh_path))
        )
        assert not np.allclose(cached, with_views.features(cut, "train"))


def test_a_resumed_fresh_trial_repeats_the_uninterrupted_epoch(
    fresh: FeatureBundle, tmp_path: Path
) -> None:
    hparams = Hyperparameters(augmentation=STRENGTH, unfreeze_blocks=1, dropout=0.0, batch_size=10)
    uninterrupted = RecipeTrainer(hparams, setup(epochs=3), fresh)
    uninterrupted.train_epoch()
    uninterrupted.train_epoch()
    uninterrupted.save(tmp_path)
    expected_inputs: list[np.ndarray] = []
    assert uninterrupted.finetune_model is not None
    spy_inputs(uninterrupted.finetune_model, expected_inputs)
    expected = uninterrupted.train_epoch()

    resumed = RecipeTrainer(hparams, setup(epochs=3), fresh)
    resumed.restore(tmp_path)
    inputs: list[np.ndarray] = []
    assert resumed.finetune_model is not None
    spy_inputs(resumed.finetune_model, inputs)
    report = resumed.train_epoch()

    assert report["phase"] == expected["phase"] == 2
    assert len(inputs) == len(expected_inputs) == 3  # 24 images in batches of 10
    for got, want in zip(inputs, expected_inputs, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert report[name] == pytest.approx(expected[name], rel=1e-5), name


def test_views_are_used_where_the_bundle_has_them(with_views: FeatureBundle) -> None:
    hparams = Hyperparameters(augmentation=STRENGTH, batch_size=WHOLE_SPLIT)
    trainer = RecipeTrainer(hparams, setup(epochs=1), with_views)
    assert trainer.augmentation_source(1) == "views"
    seen: list[np.ndarray] = []
    spy_inputs(trainer.head, seen)
    trainer.train_epoch()
    candidates = [flat(v) for v in with_views.views_of("block5_pool", STRENGTH)]
    for row in flat(seen[0]):
        assert any(np.any(np.all(c == row, axis=1)) for c in candidates)
    assert not trainer.frozen_models, "a trial with views ran the frozen layers"
    assert trainer.backbone_model is None
    assert trainer.epoch_costs[0]["fresh_seconds"] == 0.0


def test_each_phase_takes_views_or_fresh_images_on_its_own(with_views: FeatureBundle) -> None:
    """Views only at the top cut: phase 1 reads them, phase 2 augments afresh."""
    only_top = dataclasses.replace(
        with_views, views={k: v for k, v in with_views.views.items() if "block5" in k}
    )
    hparams = Hyperparameters(augmentation=STRENGTH, unfreeze_blocks=1)
    trainer = RecipeTrainer(hparams, setup(epochs=2), only_top)
    assert (trainer.augmentation_source(1), trainer.augmentation_source(2)) == ("views", "fresh")
    reports = [trainer.train_epoch(), trainer.train_epoch()]
    assert [r["phase"] for r in reports] == [1, 2]
    assert [c["source"] for c in trainer.epoch_costs] == ["views", "fresh"]
    assert list(trainer.frozen_models) == ["block4_pool"]
    with pytest.raises(ValueError, match="phase=3"):
        trainer.augmentation_source(3)


@pytest.mark.parametrize("phase", [1, 2])
def test_fresh_trials_validate_on_the_plain_cached_features(
    fresh: FeatureBundle, phase: int
) -> None:
    hparams = Hyperparameters(augmentation=STRENGTH, unfreeze_blocks=1)
    trainer = RecipeTrainer(hparams, setup(epochs=2), fresh)
    if phase == 2:
        trainer.train_epoch()
    model = trainer.head if phase == 1 else trainer._ensure_finetune()
    validated: list[np.ndarray] = []
    spy_inputs(model, validated, "test_on_batch")
    assert trainer.train_epoch()["phase"] == phase
    cut = "block5_pool" if phase == 1 else "block4_pool"
    np.testing.assert_array_equal(
        np.concatenate(validated), np.asarray(fresh.features(cut, "validation"))
    )


@pytest.mark.parametrize(("depth", "below"), [(1, 4), (2, 3)])
def test_phase_two_fresh_path_runs_only_the_layers_below_the_cut(
    fresh: FeatureBundle, depth: int, below: int
) -> None:
    cut = f"block{below}_pool"
    hparams = Hyperparameters(augmentation=STRENGTH, unfreeze_blocks=depth)
    trainer = RecipeTrainer(hparams, setup(epochs=2), fresh)
    trainer.train_epoch()
    # Phase 1 ran the whole frozen backbone; forget it to see what phase 2 builds.
    trainer.frozen_models.clear()
    assert trainer.train_epoch()["phase"] == 2
    frozen = trainer.frozen_models[cut]
    blocks = {layer.name.split("_")[0] for layer in frozen.layers if layer.name.startswith("block")}
    assert blocks == {f"block{i}" for i in range(1, below + 1)}
    assert frozen.layers[-1].name == cut
    assert frozen.output.shape[1:] == fresh.features(cut, "train").shape[1:]


def test_an_augmented_trial_without_views_or_images_names_what_is_missing(
    fresh: FeatureBundle,
) -> None:
    bare = dataclasses.replace(fresh, images={})
    with pytest.raises(FeatureCacheError, match=r"augmentation=0\.5 at cut 'block5_pool'"):
        RecipeTrainer(Hyperparameters(augmentation=0.5), setup(), bare)
    wrong = dataclasses.replace(fresh, images={"train": fresh.images["train"][:5]})
    with pytest.raises(FeatureCacheError, match=r"images\['train'\]"):
        RecipeTrainer(Hyperparameters(augmentation=0.5), setup(), wrong)


def test_entries_for_leaves_out_the_views_of_fresh_pairs() -> None:
    hparams = Hyperparameters(augmentation=0.5, unfreeze_blocks=1)
    assert entries_for(hparams, "vgg16") == (
        ["block5_pool", "block4_pool"],
        ["block5_pool@0.5", "block4_pool@0.5"],
    )
    assert not needs_images(hparams, "vgg16")
    phase_two_fresh = [("block4_pool", 0.5)]
    assert entries_for(hparams, "vgg16", fresh=phase_two_fresh) == (
        ["block5_pool", "block4_pool"],
        ["block5_pool@0.5"],
    )
    assert needs_images(hparams, "vgg16", fresh=phase_two_fresh)
    both = [("block5_pool", 0.5), ("block4_pool", 0.5)]
    assert entries_for(hparams, "vgg16", fresh=both) == (["block5_pool", "block4_pool"], [])
    # Another strength's fresh pair does not concern this trial.
    assert entries_for(hparams, "vgg16", fresh=[("block4_pool", 1)])[1] == [
        "block5_pool@0.5",
        "block4_pool@0.5",
    ]
    assert not needs_images(hparams, "vgg16", fresh=[("block4_pool", 1)])
    # An unaugmented trial reads neither views nor images.
    plain = Hyperparameters(unfreeze_blocks=1)
    assert entries_for(plain, "vgg16", fresh=both) == (["block5_pool", "block4_pool"], [])
    assert not needs_images(plain, "vgg16", fresh=both)
