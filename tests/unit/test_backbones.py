"""Contract tests over the backbone registry: every backbone goes through the same checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.backbones import (
    BACKBONES,
    INPUT_CUT,
    BackboneError,
    apply_layers,
    build_backbone,
    get_backbone,
    split_layers,
    weights_identity,
)

SIZE = 32


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def built(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    name = request.param
    return name, build_backbone(name, "none", SIZE, seed=3)


def test_block_ends_are_layers_in_increasing_depth(built) -> None:  # type: ignore[no-untyped-def]
    name, model = built
    names = [layer.name for layer in model.layers]
    positions = [names.index(end) for end in get_backbone(name).block_ends]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)
    # The last block ends at the model's output.
    assert positions[-1] == len(names) - 1


def test_cut_for_maps_depth_to_the_block_below(built) -> None:  # type: ignore[no-untyped-def]
    name, _ = built
    spec = get_backbone(name)
    assert spec.cut_for(0) == spec.block_ends[-1] == spec.top_cut
    assert spec.cut_for(1) == spec.block_ends[-2]
    assert spec.cut_for(spec.num_blocks) == INPUT_CUT
    with pytest.raises(BackboneError, match=f"has {spec.num_blocks} blocks"):
        spec.cut_for(spec.num_blocks + 1)


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_prefix_then_suffix_equals_whole_model(built, depth: int) -> None:  # type: ignore[no-untyped-def]
    import keras

    name, model = built
    spec = get_backbone(name)
    prefix, suffix = split_layers(model, spec.cut_for(depth))
    images = np.random.default_rng(0).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype("float32")
    whole = keras.ops.convert_to_numpy(model(images))
    split = keras.ops.convert_to_numpy(apply_layers(suffix, apply_layers(prefix, images)))
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-5)
    assert len(prefix) + len(suffix) == len(model.layers) - 1


def test_random_init_is_identical_for_a_seed_and_differs_across_seeds() -> None:
    first = build_backbone("vgg16", "none", SIZE, seed=5).get_layer("block5_conv3").get_weights()
    again = build_backbone("vgg16", "none", SIZE, seed=5).get_layer("block5_conv3").get_weights()
    other = build_backbone("vgg16", "none", SIZE, seed=6).get_layer("block5_conv3").get_weights()
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[0], other[0])


def test_local_weights_file_is_loaded(tmp_path: Path) -> None:
    source = build_backbone("vgg16", "none", SIZE, seed=11)
    path = tmp_path / "vgg16_notop.weights.h5"
    source.save_weights(path)
    loaded = build_backbone("vgg16", str(path), SIZE)
    np.testing.assert_array_equal(
        loaded.get_layer("block1_conv1").get_weights()[0],
        source.get_layer("block1_conv1").get_weights()[0],
    )
    assert weights_identity(str(path), 0).startswith("file-")
    assert weights_identity(str(path), 0) == weights_identity(str(path), 99)


def test_a_rewritten_weights_file_gets_a_new_identity(tmp_path: Path) -> None:
    path = tmp_path / "vgg16_notop.weights.h5"
    build_backbone("vgg16", "none", SIZE, seed=1).save_weights(path)
    before = weights_identity(str(path), 0)
    build_backbone("vgg16", "none", SIZE, seed=2).save_weights(path)
    assert weights_identity(str(path), 0) != before


def test_cuts_for_lists_the_top_cut_then_one_per_depth_without_repeats() -> None:
    spec = get_backbone("vgg16")
    assert spec.cuts_for([0, 1, 2, 1]) == ["block5_pool", "block4_pool", "block3_pool"]
    assert spec.cuts_for([0]) == ["block5_pool"]


def test_missing_weights_file_is_named() -> None:
    with pytest.raises(BackboneError, match="nope.h5"):
        build_backbone("vgg16", "nope.h5", SIZE)
    with pytest.raises(BackboneError, match="nope.h5"):
        weights_identity("nope.h5", 0)


def test_imagenet_download_failure_says_how_to_provide_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keras.src.utils import file_utils

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def refuse(*args: object, **kwargs: object) -> str:
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(file_utils, "get_file", refuse)
    with pytest.raises(BackboneError) as caught:
        build_backbone("vgg16", "imagenet", SIZE)
    message = str(caught.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "weights=/path/to/" in message
    assert str(tmp_path) in message


def test_unknown_backbone_and_tiny_images_are_rejected() -> None:
    with pytest.raises(BackboneError, match="vgg16"):
        get_backbone("vgg99")
    with pytest.raises(BackboneError, match="image_size=16"):
        build_backbone("vgg16", "none", 16)


def test_weights_identity_distinguishes_choices() -> None:
    assert weights_identity("imagenet", 0) == "imagenet"
    assert weights_identity("none", 0) != weights_identity("none", 1)
