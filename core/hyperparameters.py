"""What one trial of the recipe takes: its hyperparameters (with hard limits) and its setup.

This module is plain Python (no TensorFlow, no Ray) so that search spaces and
configuration can be validated before anything heavy is imported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

POOLING_CHOICES = ("flatten", "avg")


class HyperparameterError(ValueError):
    """A hyperparameter value is outside what the recipe can train with."""


@dataclass(frozen=True)
class Hyperparameters:
    """One point of the search: everything a trial decides.

    Defaults follow the original recipe: a 256-unit dense head with dropout 0.5
    trained by RMSprop, then SGD(1e-4, momentum 0.9) for fine-tuning.

    Attributes:
        dropout: Dropout rate after the dense layer, in [0, 1).
        augmentation: Augmentation strength in [0, 1]; 1 is the recipe's
            rotation 40 degrees, shifts/shear/zoom 0.2 and horizontal flip.
        l2: L2 weight decay on the dense kernels (>= 0).
        l1: L1 weight decay on the dense kernels (>= 0).
        unfreeze_blocks: How many top backbone blocks phase 2 fine-tunes
            (0 means head only).
        head_learning_rate: RMSprop learning rate of phase 1 (> 0).
        finetune_learning_rate: SGD learning rate of phase 2 (> 0).
        momentum: SGD momentum of phase 2, in [0, 1).
        dense_units: Width of the dense layer (>= 1).
        pooling: How the head flattens features: "flatten" or "avg".
        batch_size: Mini-batch size (>= 1).
    """

    dropout: float = 0.5
    augmentation: float = 0.0
    l2: float = 0.0
    l1: float = 0.0
    unfreeze_blocks: int = 0
    head_learning_rate: float = 1e-3
    finetune_learning_rate: float = 1e-4
    momentum: float = 0.9
    dense_units: int = 256
    pooling: str = "flatten"
    batch_size: int = 16

    def __post_init__(self) -> None:
        for name in (
            "dropout",
            "augmentation",
            "l2",
            "l1",
            "head_learning_rate",
            "finetune_learning_rate",
            "momentum",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise HyperparameterError(f"{name}={value!r}: expected a number")
        for name in ("unfreeze_blocks", "dense_units", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise HyperparameterError(f"{name}={value!r}: expected an integer")
        _check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "must be in [0, 1)")
        _check(
            0.0 <= self.augmentation <= 1.0, "augmentation", self.augmentation, "must be in [0, 1]"
        )
        _check(self.l2 >= 0.0, "l2", self.l2, "must be >= 0")
        _check(self.l1 >= 0.0, "l1", self.l1, "must be >= 0")
        _check(self.unfreeze_blocks >= 0, "unfreeze_blocks", self.unfreeze_blocks, "must be >= 0")
        _check(
            self.head_learning_rate > 0.0,
            "head_learning_rate",
            self.head_learning_rate,
            "must be > 0",
        )
        _check(
            self.finetune_learning_rate > 0.0,
            "finetune_learning_rate",
            self.finetune_learning_rate,
            "must be > 0",
        )
        _check(0.0 <= self.momentum < 1.0, "momentum", self.momentum, "must be in [0, 1)")
        _check(self.dense_units >= 1, "dense_units", self.dense_units, "must be >= 1")
        _check(
            self.pooling in POOLING_CHOICES,
            "pooling",
            self.pooling,
            f"must be one of {', '.join(POOLING_CHOICES)}",
        )
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The names a search space may declare."""
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def field_type(cls, name: str) -> type:
        """The Python type of hyperparameter ``name`` (float, int or str)."""
        default = getattr(cls(), name)
        return type(default)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Hyperparameters:
        """Builds hyperparameters from a trial config, ignoring non-hyperparameter keys.

        Integers given as floats by a sampler (3.0) are accepted for integer
        fields; anything else of the wrong type is an error naming the key.
        """
        known = set(cls.names())
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            if name not in known:
                continue
            wanted = cls.field_type(name)
            if wanted is int and isinstance(value, float) and value.is_integer():
                value = int(value)
            elif wanted is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            kwargs[name] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(condition: bool, name: str, value: object, requirement: str) -> None:
    if not condition:
        raise HyperparameterError(f"{name}={value!r}: {requirement}")


@dataclass(frozen=True)
class TrainingSetup:
    """What a trial takes from the search rather than from its hyperparameters.

    Attributes:
        backbone: Registry name.
        weights: "imagenet", "none" or a weights file path.
        image_size: Side of the input images.
        epochs: Total epochs (both phases).
        head_epochs: Epochs of phase 1 when phase 2 follows; a head-only
            trial trains the head for all ``epochs``.
        seed: Seed of the backbone's random init and of training.
        planned_epochs: The epochs the phase schedule was planned for (the
            search's ``max_epochs``); None means ``epochs``. Final training of
            a trial ASHA stopped early trains fewer ``epochs`` but must switch
            phase exactly where the trial did.
    """

    backbone: str
    weights: str
    image_size: int
    epochs: int
    head_epochs: int
    seed: int = 0
    planned_epochs: int | None = None

    @property
    def phase_one_epochs(self) -> int:
        """Epochs of phase 1 for a trial that fine-tunes (at least 1, and at
        least one phase-2 epoch is left when the plan has two or more)."""
        planned = self.planned_epochs or self.epochs
        return max(1, min(self.head_epochs, planned - 1))

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise HyperparameterError(f"epochs={self.epochs}: must be >= 1")
        if self.head_epochs < 1:
            raise HyperparameterError(f"head_epochs={self.head_epochs}: must be >= 1")
        if self.planned_epochs is not None and self.planned_epochs < self.epochs:
            raise HyperparameterError(
                f"planned_epochs={self.planned_epochs}: must be >= epochs ({self.epochs})"
            )
