"""Keras layers bottletune puts in its models: backbone preprocessing and augmentation."""

from __future__ import annotations

import math
from typing import Any

import keras

from core.backbones import get_backbone

# The recipe's ImageDataGenerator settings, reached at augmentation strength 1.
RECIPE_ROTATION_DEGREES = 40.0
RECIPE_SHIFT = 0.2
# ImageDataGenerator's shear_range is an angle in degrees: the recipe's 0.2
# is a very light shear (RandomShear takes the shear coefficient, tan(angle)).
RECIPE_SHEAR_DEGREES = 0.2
RECIPE_ZOOM = 0.2


@keras.saving.register_keras_serializable(package="bottletune")
class BackbonePreprocess(keras.layers.Layer):
    """Applies a registered backbone's own ``preprocess_input`` inside the model.

    Saved models then take plain RGB images in [0, 255], so ``predict`` needs
    nothing but the resized image.
    """

    def __init__(self, backbone: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self._preprocess = get_backbone(backbone).preprocess_input()

    def call(self, inputs: Any) -> Any:
        return self._preprocess(keras.ops.cast(inputs, "float32"))

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config["backbone"] = self.backbone
        return config


def build_augmentation(strength: float, seed: int | None = None) -> keras.Sequential | None:
    """Image augmentation of the given strength, from Keras preprocessing layers.

    Args:
        strength: 0 (none) to 1 (the recipe: rotation 40 degrees, width/height
            shift 0.2, shear 0.2 degrees, zoom 0.2, horizontal flip). Ranges
            scale linearly; the flip is on for any strength above 0.
        seed: Seed of the random transforms.

    Returns:
        A Sequential of augmentation layers, or None for strength 0.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"augmentation={strength!r}: must be in [0, 1]")
    if strength == 0.0:
        return None
    rotation = RECIPE_ROTATION_DEGREES * strength / 360.0
    shift = RECIPE_SHIFT * strength
    shear = math.tan(math.radians(RECIPE_SHEAR_DEGREES * strength))

    def layer_seed(offset: int) -> int | None:
        # Each layer its own seed: equal seeds would make every transform
        # draw the same random numbers, in lockstep.
        return None if seed is None else seed + offset

    return keras.Sequential(
        [
            keras.layers.RandomRotation(rotation, fill_mode="nearest", seed=layer_seed(0)),
            keras.layers.RandomTranslation(shift, shift, fill_mode="nearest", seed=layer_seed(1)),
            keras.layers.RandomShear(
                x_factor=shear, y_factor=0.0, fill_mode="nearest", seed=layer_seed(2)
            ),
            keras.layers.RandomZoom(
                RECIPE_ZOOM * strength, fill_mode="nearest", seed=layer_seed(3)
            ),
            keras.layers.RandomFlip("horizontal", seed=layer_seed(4)),
        ],
        name="augmentation",
    )
