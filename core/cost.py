"""What an epoch of the recipe costs, in head epochs: the time unit of cost-aware ASHA.

A phase-1 epoch trains the head on cached features; a phase-2 epoch also runs
the unfrozen top blocks forward and backward, which costs tens to hundreds of
head epochs. ASHA that counts epochs compares a deep trial with a head-only
one after the same number of epochs, so the deep one has had far more compute
by its first rung. Counting cost instead puts the rungs at equal compute.

The cost is a count, not a measurement, so that a seeded search places its
rungs the same way on every run and on any machine:

- a phase-1 epoch costs 1, whatever the head (the unit, "head epochs");
- a phase-2 epoch costs 1 plus the multiply-accumulates of the unfrozen blocks
  per image, divided by those of the reference head (the recipe's
  ``Dense(256)`` on the flattened top-block output) per image. Forward and
  backward passes scale alike for both, and both see the same images, so the
  ratio per image is the ratio per epoch.

Only convolutions and dense layers are counted; pooling, batch norm and
activations move memory rather than multiply, and are a few percent of a
block's work. Per-batch overheads (Python, kernel launches) are not counted:
they make a small head epoch cost more than its arithmetic, so on a CPU at 32
to 64 px a phase-2 epoch was measured at about 20 to 180 head epochs where this
count says about 200 to 1000 (``bench/startup.py`` and the README give the
numbers).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from core.hyperparameters import TrainingSetup

REFERENCE_HEAD_UNITS = 256
"""Width of the reference head whose epoch is the unit of cost (the recipe's head)."""


@dataclass(frozen=True)
class EpochCosts:
    """What one epoch costs, in head epochs, for each ``unfreeze_blocks`` value.

    Attributes:
        backbone: Registry name.
        image_size: Side of the input images.
        phase_two: Cost of one phase-2 epoch, indexed by ``unfreeze_blocks``
            (index 0, head only, has no phase 2 and holds 1.0).
    """

    backbone: str
    image_size: int
    phase_two: tuple[float, ...]

    def epoch_cost(self, unfreeze_blocks: int, phase: int) -> float:
        """Cost of one epoch in ``phase`` (1 or 2) for a trial with ``unfreeze_blocks``."""
        if not 0 <= unfreeze_blocks < len(self.phase_two):
            raise ValueError(
                f"unfreeze_blocks={unfreeze_blocks}: backbone {self.backbone!r} has "
                f"{len(self.phase_two) - 1} blocks"
            )
        return 1.0 if phase == 1 else self.phase_two[unfreeze_blocks]

    def cumulative(self, setup: TrainingSetup, unfreeze_blocks: int, epochs: int) -> float:
        """Cost of a trial's first ``epochs`` epochs, phases as ``RecipeTrainer`` runs them."""
        if unfreeze_blocks == 0:
            return float(epochs)
        head_epochs = min(epochs, setup.phase_one_epochs)
        return head_epochs + (epochs - head_epochs) * self.epoch_cost(unfreeze_blocks, 2)

    def max_cost(self, setup: TrainingSetup, depths: Iterable[int]) -> float:
        """Cost of the dearest full trial (``setup.epochs`` epochs) over these depths."""
        return max(self.cumulative(setup, depth, setup.epochs) for depth in depths)


def layer_macs(layer: Any) -> int:
    """Multiply-accumulates of one forward pass of ``layer`` for one image (0 if not counted)."""
    import keras

    if isinstance(layer, keras.layers.DepthwiseConv2D):
        _, height, width, channels = layer.output.shape
        kernel = math.prod(layer.kernel_size)
        return int(height * width * channels * kernel)
    if isinstance(layer, keras.layers.Conv2D):
        _, height, width, filters = layer.output.shape
        channels = layer.input.shape[-1]
        kernel = math.prod(layer.kernel_size)
        return int(height * width * filters * kernel * channels // layer.groups)
    if isinstance(layer, keras.layers.Dense):
        return int(math.prod(layer.input.shape[1:]) * layer.units)
    return 0


@functools.lru_cache(maxsize=8)
def epoch_costs(backbone: str, image_size: int) -> EpochCosts:
    """The cost of a phase-2 epoch at every depth, counted on the backbone's layers.

    Builds the backbone once per process and size (random init: only the
    shapes matter, nothing is downloaded).
    """
    from core.backbones import build_backbone, get_backbone, split_layers

    spec = get_backbone(backbone)
    model = build_backbone(backbone, "none", image_size)
    top = model.get_layer(spec.top_cut).output.shape
    reference = math.prod(top[1:]) * REFERENCE_HEAD_UNITS + REFERENCE_HEAD_UNITS
    costs = [1.0]
    for depth in range(1, spec.num_blocks + 1):
        _, trained = split_layers(model, spec.cut_for(depth))
        costs.append(1.0 + sum(layer_macs(layer) for layer in trained) / reference)
    return EpochCosts(backbone=backbone, image_size=image_size, phase_two=tuple(costs))


def epoch_costs_elsewhere(backbone: str, image_size: int, *, timeout_s: float = 300) -> EpochCosts:
    """``epoch_costs`` counted in a fresh CPU-only interpreter, for processes that must not
    start TensorFlow (a search's driver: on a GPU node it would map the GPU's memory).

    Raises:
        RuntimeError: The interpreter failed (its error output is in the message).
    """
    from core.runtime import json_from_fresh_interpreter

    code = (
        "import json, sys\n"
        "from core.cost import epoch_costs\n"
        "print(json.dumps(list(epoch_costs(sys.argv[1], int(sys.argv[2])).phase_two)))\n"
    )
    phase_two = json_from_fresh_interpreter(
        code,
        [backbone, str(image_size)],
        what=f"counting the epoch costs of {backbone!r} at {image_size} px",
        cpu_only=True,
        timeout_s=timeout_s,
    )
    return EpochCosts(backbone=backbone, image_size=image_size, phase_two=tuple(phase_two))
