"""The stand-in for ImageNet weights: unit-variance init and a reusable pretrained file."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from bench import pretrained
from bench.pretrained import PretrainSettings, ensure_pretrained, unit_variance_init
from core.backbones import build_backbone


def test_unit_variance_init_scales_every_conv_output_to_one() -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        ]
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel * 0.01, bias])
    images = np.random.default_rng(0).normal(size=(32, 16, 16, 3)).astype("float32")

    before = unit_variance_init(model, images)

    assert len(before) == 3 and all(std < 0.05 for std in before), before
    hidden = images
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            assert np.asarray(layer(hidden)).std() == pytest.approx(1.0, rel=0.05)
            assert not layer.get_weights()[1].any()
        hidden = np.asarray(layer(hidden))


def test_pretrained_file_loads_as_a_local_weights_file_and_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = PretrainSettings(size=32, per_class=2, epochs=1, batch_size=8)

    path, record = ensure_pretrained(settings, tmp_path)

    assert path.name == f"{settings.stem}.weights.h5" and path.is_file()
    assert json.loads(path.with_name(f"{settings.stem}.json").read_text()) == record
    assert record["train_images"] == 16 and len(record["val_accuracy_by_epoch"]) == 1
    assert not list(tmp_path.glob("*.partial*"))
    loaded = build_backbone("vgg16", str(path), 32)
    fresh = build_backbone("vgg16", "none", 32, seed=settings.seed)
    kernel = loaded.get_layer("block1_conv1").get_weights()[0]
    assert not np.allclose(kernel, fresh.get_layer("block1_conv1").get_weights()[0])

    def no_retraining(*_: object) -> None:
        raise AssertionError("pretrain called")

    monkeypatch.setattr(pretrained, "pretrain", no_retraining)
    assert ensure_pretrained(settings, tmp_path) == (path, record)
    other = PretrainSettings(size=32, per_class=2, epochs=2, batch_size=8)
    with pytest.raises(AssertionError, match="pretrain called"):
        ensure_pretrained(other, tmp_path)


def test_settings_name_their_shapes_unless_all_eight() -> None:
    assert PretrainSettings().stem == "vgg16-shapes-64px-160x8-12ep-lr0.0003-b32-s1234"
    some = PretrainSettings(per_class=320, shapes=("ring", "diamond", "star", "crescent"))
    assert some.stem == "vgg16-shapes-64px-320x4-12ep-lr0.0003-b32-s1234-ring+diamond+star+crescent"


def test_pretraining_learns_only_the_settings_shapes(tmp_path: Path) -> None:
    settings = PretrainSettings(
        size=32, per_class=2, epochs=1, batch_size=8, shapes=("ring", "star")
    )

    _, record = ensure_pretrained(settings, tmp_path)

    assert record["train_images"] == 4 and record["settings"]["shapes"] == ["ring", "star"]


def test_augmentation_pretrains_on_every_shape_or_on_those_its_data_lacks() -> None:
    from bench.augmentation import parse_args, pretrain_settings

    other = pretrain_settings(parse_args(["--classes", "3", "--pretrain-shapes", "other"]))
    assert other.shapes == ("cross", "ring", "diamond", "star", "crescent")
    assert other.per_class == 1280 // 5
    assert pretrain_settings(parse_args([])) == PretrainSettings()
    with pytest.raises(SystemExit):
        parse_args(["--classes", "7", "--pretrain-shapes", "other"])
