"""The Ray Tune trainable: one trial of the recipe, reporting and checkpointing each epoch."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

from core.features import FeatureBundle


@dataclass(frozen=True)
class TrialContext:
    """The search-wide settings every trial shares (not searched over)."""

    backbone: str
    weights: str
    image_size: int
    max_epochs: int
    head_epochs: int
    seed: int
    cpus_per_trial: float


def recipe_trainable(
    config: dict[str, Any], *, bundle: FeatureBundle, context: TrialContext
) -> None:
    """Trains one configuration, reporting metrics and a checkpoint every epoch.

    Features come from the object store (``bundle``); nothing here runs the
    frozen blocks except an augmented fine-tuning phase, which must.
    """
    from ray import tune

    from core.hyperparameters import Hyperparameters
    from core.runtime import configure_tensorflow
    from core.training import RecipeTrainer, TrainingSetup

    configure_tensorflow(max(1, int(context.cpus_per_trial)))
    hparams = Hyperparameters.from_mapping(config)
    setup = TrainingSetup(
        backbone=context.backbone,
        weights=context.weights,
        image_size=context.image_size,
        epochs=context.max_epochs,
        head_epochs=context.head_epochs,
        seed=context.seed,
    )
    trainer = RecipeTrainer(hparams, setup, bundle)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.restore(directory)
    while not trainer.done:
        metrics = trainer.train_epoch()
        metrics["resumed"] = checkpoint is not None
        with tempfile.TemporaryDirectory(prefix="bottletune-ckpt-") as directory:
            trainer.save(directory)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
