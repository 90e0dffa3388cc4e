"""The models of the recipe: the dense head, the fine-tuning stack and the exported model."""

from __future__ import annotations

from typing import Any

import keras

from core.backbones import INPUT_CUT, apply_layers, split_layers
from core.hyperparameters import Hyperparameters
from core.layers import BackbonePreprocess


def build_head(
    feature_shape: tuple[int, ...], num_classes: int, hparams: Hyperparameters
) -> keras.Model:
    """The recipe's classifier on bottleneck features.

    Flatten (or global average pooling) -> Dense(units, relu) -> Dropout ->
    one sigmoid unit for two classes, softmax otherwise. L1/L2 decay applies to
    both dense kernels.
    """
    regularizer = (
        keras.regularizers.L1L2(l1=hparams.l1, l2=hparams.l2) if hparams.l1 or hparams.l2 else None
    )
    inputs = keras.Input(shape=feature_shape, name="features")
    if hparams.pooling == "avg" and len(feature_shape) == 3:
        x = keras.layers.GlobalAveragePooling2D(name="head_pool")(inputs)
    else:
        x = keras.layers.Flatten(name="head_flatten")(inputs)
    x = keras.layers.Dense(
        hparams.dense_units, activation="relu", kernel_regularizer=regularizer, name="head_dense"
    )(x)
    x = keras.layers.Dropout(hparams.dropout, name="head_dropout")(x)
    if num_classes == 2:
        outputs = keras.layers.Dense(
            1, activation="sigmoid", kernel_regularizer=regularizer, name="head_output"
        )(x)
    else:
        outputs = keras.layers.Dense(
            num_classes, activation="softmax", kernel_regularizer=regularizer, name="head_output"
        )(x)
    return keras.Model(inputs, outputs, name="head")


def loss_for(num_classes: int) -> str:
    return "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"


def unfreeze(layers: list[Any]) -> None:
    """Makes fine-tuned layers trainable; batch norm stays in inference mode.

    Keras' transfer-learning guide keeps BatchNormalization frozen while
    fine-tuning so that small batches do not wreck its statistics.
    """
    for layer in layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)


def freeze(layers: list[Any]) -> None:
    for layer in layers:
        layer.trainable = False


def build_finetune_model(
    backbone_model: keras.Model, cut: str, cut_shape: tuple[int, ...], head: keras.Model
) -> keras.Model:
    """The phase-2 model: cached cut features -> the unfrozen top blocks -> the head.

    The frozen blocks below ``cut`` are not part of it: their output comes from
    the cache (plain or augmented views), so they never run during training.

    Args:
        backbone_model: The backbone whose top blocks are fine-tuned.
        cut: Where the frozen part ends.
        cut_shape: Shape of one cached feature at the cut.
        head: The head trained in phase 1 (its layers are shared, not copied).
    """
    prefix, suffix = split_layers(backbone_model, cut)
    freeze(prefix)
    unfreeze(suffix)
    cut_input = keras.Input(shape=cut_shape, name="cut_features")
    return keras.Model(cut_input, head(apply_layers(suffix, cut_input)), name="finetune")


def build_inference_model(
    backbone_model: keras.Model, backbone: str, head: keras.Model
) -> keras.Model:
    """The exported model: RGB images in [0, 255] -> class probabilities."""
    _, every_layer = split_layers(backbone_model, INPUT_CUT)
    image_input = keras.Input(shape=backbone_model.input_shape[1:], name="image")
    x = BackbonePreprocess(backbone, name="preprocess")(image_input)
    outputs = head(apply_layers(every_layer, x))
    return keras.Model(image_input, outputs, name=f"bottletune_{backbone}")
