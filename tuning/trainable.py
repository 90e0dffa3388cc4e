"""The Ray Tune trainable: one trial of the recipe, reporting and checkpointing each epoch."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

from core.features import FeatureBundle
from core.hyperparameters import Hyperparameters, TrainingSetup


@dataclass(frozen=True)
class TrialContext:
    """The search-wide settings every trial shares (not searched over).

    Attributes:
        setup: Backbone, weights, image size, epochs (ASHA's max_t) and seed.
        cpus_per_trial: CPUs Ray reserves per trial; TensorFlow gets as many threads.
    """

    setup: TrainingSetup
    cpus_per_trial: float


def recipe_trainable(
    config: dict[str, Any], *, bundle: FeatureBundle, context: TrialContext
) -> None:
    """Trains one configuration, reporting metrics and a checkpoint every epoch.

    Features come from the object store (``bundle``); nothing here runs the
    frozen blocks except an augmented fine-tuning phase, which must.
    """
    from ray import tune

    from core.runtime import configure_tensorflow
    from core.training import RecipeTrainer

    configure_tensorflow(max(1, int(context.cpus_per_trial)))
    trainer = RecipeTrainer(Hyperparameters.from_mapping(config), context.setup, bundle)
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
