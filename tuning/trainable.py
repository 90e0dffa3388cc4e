"""The Ray Tune trainable: one trial of the recipe, reporting and checkpointing each epoch."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cluster.object_store import SharedFeatures
from core.hyperparameters import Hyperparameters, TrainingSetup


@dataclass(frozen=True)
class TrialContext:
    """The search-wide settings every trial shares (not searched over).

    Attributes:
        setup: Backbone, weights, image size, epochs (ASHA's max_t) and seed.
        cpus_per_trial: CPUs Ray reserves per trial; TensorFlow gets as many threads.
        gpus_per_trial: GPUs Ray reserves per trial. Ray's fractions are only
            logical, so a fraction also caps TensorFlow's share of the GPU's memory.
    """

    setup: TrainingSetup
    cpus_per_trial: float
    gpus_per_trial: float = 0.0


def recipe_trainable(
    config: dict[str, Any], *, features: SharedFeatures, context: TrialContext
) -> None:
    """Trains one configuration, reporting metrics and a checkpoint every epoch.

    The trial fetches from the object store only the cached entries its own
    hyperparameters use; nothing here runs the frozen blocks, not even for
    augmented trials (they train on cached views).
    """
    from ray import tune

    from cluster.monitoring import TrialMetrics, for_progress_table
    from core.runtime import configure_tensorflow
    from core.training import RecipeTrainer, entries_for

    configure_tensorflow(max(1, int(context.cpus_per_trial)), gpu_fraction=context.gpus_per_trial)
    hparams = Hyperparameters.from_mapping(config)
    bundle = features.fetch(*entries_for(hparams, context.setup.backbone))
    trainer = RecipeTrainer(hparams, context.setup, bundle)
    monitor = TrialMetrics(tune.get_context().get_trial_id())
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.restore(directory)
    while not trainer.done:
        crash = _crash_hook(trainer.epoch + 1)
        metrics = for_progress_table(trainer.train_epoch(on_batch=crash))
        metrics["resumed"] = checkpoint is not None
        monitor.record_epoch(metrics)
        with tempfile.TemporaryDirectory(prefix="bottletune-ckpt-") as directory:
            trainer.save(directory)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


CRASH_MARKER_ENV = "BOTTLETUNE_TEST_CRASH_MARKER"
CRASH_EPOCH_ENV = "BOTTLETUNE_TEST_CRASH_EPOCH"


def _crash_hook(epoch: int) -> Callable[[int], None] | None:
    """Fault injection for tests: the first trial to reach the middle of epoch N dies there.

    Only when both environment variables are set (N is 1-based). The trial's
    process exits right after the second training batch of that epoch, with
    the epoch part-trained and not checkpointed (an epoch of one batch never
    crashes). The marker file makes it happen once per search, so that the
    retried trial can show it resumed from the checkpoint of epoch N - 1.
    ``os._exit`` skips every clean-up, as a killed process would.
    """
    marker = os.environ.get(CRASH_MARKER_ENV)
    if not marker or os.environ.get(CRASH_EPOCH_ENV) != str(epoch):
        return None

    def crash_mid_epoch(batch: int) -> None:
        if batch != 1:
            return
        try:
            descriptor = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(descriptor, f"{os.getpid()} {epoch} {batch}\n".encode())
        os.close(descriptor)
        os._exit(17)

    return crash_mid_epoch
