"""The recipe's two training phases, one epoch at a time, on cached features.

Phase 1 trains the head on the top block's cached output. Phase 2 (only when
``unfreeze_blocks > 0``) fine-tunes the top blocks together with that head, with
SGD and momentum at a low learning rate, starting from the cached output of the
block below them. ``RecipeTrainer`` steps one epoch at a time so that a Ray Tune
trial can report and checkpoint after each epoch, and the final training uses
the very same code.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from core.backbones import build_backbone, get_backbone
from core.features import FeatureBundle
from core.hyperparameters import Hyperparameters, TrainingSetup
from core.model import build_finetune_models, build_head, build_inference_model, loss_for

logger = logging.getLogger(__name__)


class ArrayBatches(keras.utils.PyDataset):
    """Mini-batches sliced from (possibly read-only, shared) arrays.

    Slicing per batch avoids copying a whole shared feature array into every
    trial, which ``model.fit(array)`` would do.
    """

    def __init__(
        self, x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool, seed: int
    ) -> None:
        super().__init__()
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(x)) if shuffle else np.arange(len(x))

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.sort(self._order[index * self.batch_size : (index + 1) * self.batch_size])
        return np.asarray(self.x[rows], dtype="float32"), self.y[rows]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self._order = self._rng.permutation(len(self.x))


class RecipeTrainer:
    """Trains one configuration of the recipe, one epoch per call.

    Args:
        hparams: The trial's hyperparameters.
        setup: Backbone, weights, size, epochs and seed.
        bundle: Cached features (and images, if augmenting) for this dataset.
    """

    def __init__(
        self, hparams: Hyperparameters, setup: TrainingSetup, bundle: FeatureBundle
    ) -> None:
        spec = get_backbone(setup.backbone)
        if hparams.unfreeze_blocks > spec.num_blocks:
            raise ValueError(
                f"unfreeze_blocks={hparams.unfreeze_blocks}: backbone {spec.name!r} has "
                f"{spec.num_blocks} blocks"
            )
        self.hparams = hparams
        self.setup = setup
        self.bundle = bundle
        self.num_classes = len(bundle.class_names)
        self.top_cut = spec.top_cut
        self.cut = spec.cut_for(hparams.unfreeze_blocks)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self._labels = {split: self._target(bundle.labels[split]) for split in bundle.labels}
        keras.backend.clear_session()
        keras.utils.set_random_seed(setup.seed)
        feature_shape = tuple(bundle.features(self.top_cut, "train").shape[1:])
        self.head = build_head(feature_shape, self.num_classes, hparams)
        self.head.compile(
            optimizer=keras.optimizers.RMSprop(learning_rate=hparams.head_learning_rate),
            loss=loss_for(self.num_classes),
            metrics=["accuracy"],
        )
        self.backbone_model: keras.Model | None = None
        self.train_model: keras.Model | None = None
        self.feature_model: keras.Model | None = None

    def _target(self, labels: np.ndarray) -> np.ndarray:
        if self.num_classes == 2:
            return labels.astype("float32").reshape(-1, 1)
        return labels.astype("int32")

    @property
    def fine_tunes(self) -> bool:
        return self.hparams.unfreeze_blocks > 0

    def phase_of(self, epoch: int) -> int:
        """1 (head on cached top features) or 2 (fine-tuning) for a 0-based epoch."""
        if not self.fine_tunes:
            return 1
        head_epochs = min(self.setup.head_epochs, self.setup.epochs - 1)
        return 1 if epoch < max(head_epochs, 1) else 2

    @property
    def done(self) -> bool:
        return self.epoch >= self.setup.epochs

    def _ensure_backbone(self) -> keras.Model:
        if self.backbone_model is None:
            self.backbone_model = build_backbone(
                self.setup.backbone, self.setup.weights, self.setup.image_size, self.setup.seed
            )
            # build_backbone reseeds for a random init; training continues from
            # its own seed, offset by the epoch so that resumed runs match.
            keras.utils.set_random_seed(self.setup.seed + 1000 + self.epoch)
        return self.backbone_model

    def _ensure_finetune(self) -> tuple[keras.Model, keras.Model]:
        if self.train_model is None or self.feature_model is None:
            backbone_model = self._ensure_backbone()
            cut_shape = tuple(self.bundle.features(self.cut, "train").shape[1:])
            self.train_model, self.feature_model = build_finetune_models(
                backbone_model,
                self.setup.backbone,
                self.cut,
                cut_shape,
                self.head,
                self.hparams.augmentation,
                self.setup.seed,
            )
            self.train_model.compile(
                optimizer=keras.optimizers.SGD(
                    learning_rate=self.hparams.finetune_learning_rate,
                    momentum=self.hparams.momentum,
                ),
                loss=loss_for(self.num_classes),
                metrics=["accuracy"],
            )
            if self.feature_model is not self.train_model:
                self.feature_model.compile(loss=loss_for(self.num_classes), metrics=["accuracy"])
        return self.train_model, self.feature_model

    def train_epoch(self) -> dict[str, Any]:
        """Trains one epoch and evaluates on the validation split.

        Returns:
            epoch (1-based), phase, loss, accuracy, val_loss, val_accuracy and
            epoch_seconds.
        """
        if self.done:
            raise RuntimeError(f"all {self.setup.epochs} epochs are trained")
        started = time.perf_counter()
        phase = self.phase_of(self.epoch)
        batch = self.hparams.batch_size
        seed = self.setup.seed + self.epoch
        if phase == 1:
            train_model = eval_model = self.head
            train_x = self.bundle.features(self.top_cut, "train")
            val_x = self.bundle.features(self.top_cut, "validation")
        else:
            train_model, eval_model = self._ensure_finetune()
            val_x = self.bundle.features(self.cut, "validation")
            if self.hparams.augmentation > 0:
                if self.bundle.images is None:
                    raise ValueError("augmentation > 0 needs the bundle's images")
                train_x = self.bundle.images["train"]
            else:
                train_x = self.bundle.features(self.cut, "train")
        fit = train_model.fit(
            ArrayBatches(train_x, self._labels["train"], batch, shuffle=True, seed=seed),
            epochs=1,
            verbose=0,
        )
        val_loss, val_accuracy = eval_model.evaluate(
            ArrayBatches(val_x, self._labels["validation"], batch, shuffle=False, seed=0),
            verbose=0,
        )
        self.epoch += 1
        metrics = {
            "epoch": self.epoch,
            "phase": phase,
            "loss": float(fit.history["loss"][-1]),
            "accuracy": float(fit.history["accuracy"][-1]),
            "val_loss": float(val_loss),
            "val_accuracy": float(val_accuracy),
            "epoch_seconds": time.perf_counter() - started,
        }
        self.history.append(metrics)
        return metrics

    def save(self, directory: str | Path) -> None:
        """Writes the trainer's state (weights and progress) to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.head.save_weights(directory / "head.weights.h5")
        if self.feature_model is not None:
            self.feature_model.save_weights(directory / "finetune.weights.h5")
        state = {
            "epoch": self.epoch,
            "history": self.history,
            "finetune": self.feature_model is not None,
        }
        (directory / "state.json").write_text(json.dumps(state, indent=2))

    def restore(self, directory: str | Path) -> None:
        """Continues from a directory written by ``save``.

        Weights, optimizer state and progress are restored.
        """
        directory = Path(directory)
        state = json.loads((directory / "state.json").read_text())
        # Optimizer variables are created lazily; build them so that the saved
        # moments have somewhere to go.
        self.head.optimizer.build(self.head.trainable_variables)
        self.head.load_weights(directory / "head.weights.h5")
        if state["finetune"]:
            train_model, feature_model = self._ensure_finetune()
            train_model.optimizer.build(train_model.trainable_variables)
            feature_model.load_weights(directory / "finetune.weights.h5")
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])

    def inference_model(self) -> keras.Model:
        """The full model (preprocessing, backbone, head) on RGB images in [0, 255]."""
        return build_inference_model(self._ensure_backbone(), self.setup.backbone, self.head)
