"""Training the final model from an exported config (no Ray needed)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from core.backbones import weights_identity
from core.data import load_images, scan_dataset
from core.features import FeatureCache
from core.hyperparameters import Hyperparameters
from core.progress import EpochPrinter
from tuning.run_dir import MODEL_FILE, BestConfig, FinalMetrics, ModelInfo, RunDirError

logger = logging.getLogger(__name__)

EPOCH_WEIGHTS = ("best", "last")
"""What ``train_final`` saves: the best validation epoch's weights, or the last epoch's."""


def train_final(
    config_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    threads: int | None = None,
    progress: bool = True,
    epoch_weights: str = "best",
) -> FinalMetrics:
    """Trains the model an exported config describes: phase 1, then phase 2.

    Uses the same feature cache and the same trainer as the search's trials,
    then assembles the whole model (preprocessing, backbone, head) and saves it.

    Args:
        config_path: A JSON file written by ``bottletune export``.
        data_dir: The dataset (normally the one searched on).
        out: Output directory for ``model.keras``, ``model_info.json`` and
            ``metrics.json``.
        cache_dir: The feature cache (default: the search's).
        force: Overwrite an existing model in ``out``.
        threads: TensorFlow threads (default: all cores).
        progress: Show the feature-extraction progress bar, and a batch progress
            bar on a terminal (epoch lines are printed either way).
        epoch_weights: ``best``: the saved model holds the weights of the epoch
            with the best validation accuracy (the earliest of equals), as Keras'
            ``EarlyStopping(restore_best_weights=True)`` and KerasTuner do;
            ``last``: the last epoch's. Measured in ``bench/peers.py``: the best
            epoch's weights were never worse on the held-out test split: the
            same at 48 px, 4 points better in both 96 px runs (docs/benchmarks.md).

    Returns:
        The metrics written to ``metrics.json``: validation accuracy during
        training, validation and (when the data has one) test accuracy of the
        saved model, and the per-epoch history.
    """
    from core.inference import INFO_FILE, load_model, split_accuracy
    from core.runtime import configure_tensorflow
    from core.training import RecipeTrainer

    if epoch_weights not in EPOCH_WEIGHTS:
        raise ValueError(f"epoch_weights={epoch_weights!r}: one of {', '.join(EPOCH_WEIGHTS)}")
    config = BestConfig.read(config_path)
    out = Path(out)
    model_path = out / MODEL_FILE
    if model_path.exists() and not force:
        raise FileExistsError(f"{model_path} exists; pass --force to overwrite it")
    identity = weights_identity(config.weights, config.seed)
    if identity != config.weights_identity:
        raise RunDirError(
            f"{config_path}: weights={config.weights!r} are not the weights the search used "
            f"(identity {identity}, searched with {config.weights_identity})"
        )
    configure_tensorflow(threads)
    index = scan_dataset(data_dir, config.validation_fraction, config.seed)
    if index.fingerprint != config.dataset_fingerprint:
        logger.warning(
            "%s is not the data the search ran on (fingerprint %s, exported %s); training "
            "with the exported hyperparameters anyway",
            data_dir,
            index.fingerprint[:12],
            config.dataset_fingerprint[:12],
        )
    hparams: Hyperparameters = config.hyperparameters
    cache = FeatureCache(str(cache_dir or config.cache_dir))
    bundle = cache.ensure(index, config.feature_request(), progress=progress)
    if config.augments_fresh:
        # As the trial did: fresh transforms every epoch where its search had no views.
        bundle.images["train"] = load_images(
            index.splits["train"], config.image_size, progress=False
        ).images
    setup = config.training_setup()
    trainer = RecipeTrainer(hparams, setup, bundle)
    printer = EpochPrinter(setup.epochs, bar=None if progress else False)
    kept = None
    while not trainer.done:
        on_batch = printer.start_epoch(
            trainer.epoch + 1,
            phase=trainer.phase_of(trainer.epoch),
            batches=trainer.batches_per_epoch,
        )
        metrics = trainer.train_epoch(on_batch=on_batch)
        printer.end_epoch(metrics)
        if epoch_weights == "best" and (
            kept is None or metrics["val_accuracy"] > kept.val_accuracy
        ):
            kept = trainer.weights()
    if kept is None:  # epoch_weights="last": one copy, after training
        kept = trainer.weights()
    if kept.epoch != trainer.epoch:
        trainer.restore_weights(kept)
        logger.info(
            "saving the weights of epoch %d of %d (val_accuracy %.4f, the best; the last "
            "epoch's was %.4f)",
            kept.epoch,
            trainer.epoch,
            kept.val_accuracy,
            trainer.history[-1]["val_accuracy"],
        )
    out.mkdir(parents=True, exist_ok=True)
    trainer.inference_model().save(model_path)
    ModelInfo(
        class_names=index.class_names,
        image_size=config.image_size,
        backbone=config.backbone,
        validation_fraction=config.validation_fraction,
        seed=config.seed,
    ).write(out / INFO_FILE)
    # Measured on the model as saved and loaded back, not the one in memory.
    saved_model, saved_info = load_model(model_path)
    final = FinalMetrics(
        trained_validation_accuracy=kept.val_accuracy,
        validation_accuracy=split_accuracy(saved_model, saved_info, index, "validation")[
            "accuracy"
        ],
        search_value=config.value,
        epochs=trainer.epoch,
        history=trainer.history,
        kept_epoch=kept.epoch,
        epoch_weights=epoch_weights,
        test_accuracy=(
            split_accuracy(saved_model, saved_info, index, "test")["accuracy"]
            if "test" in index.splits
            else None
        ),
    )
    final.write(out)
    return final
