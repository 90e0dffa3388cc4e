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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np

from core.backbones import build_backbone, get_backbone
from core.features import FeatureBundle, view_name
from core.hyperparameters import Hyperparameters, TrainingSetup
from core.model import build_finetune_model, build_head, build_inference_model, loss_for

logger = logging.getLogger(__name__)

HEAD_EVALUATION_BATCH = 512
"""Validation batch of phase 1 (the head on cached features)."""


def array_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Mini-batches sliced from (possibly read-only, shared) arrays.

    Slicing per batch avoids copying a whole shared feature array into every
    trial, which ``model.fit(array)`` would do.
    """
    order = np.random.default_rng(seed).permutation(len(x)) if shuffle else np.arange(len(x))
    for start in range(0, len(x), batch_size):
        rows = np.sort(order[start : start + batch_size])
        yield np.asarray(x[rows], dtype="float32"), y[rows]


def view_batches(
    views: tuple[np.ndarray, ...], y: np.ndarray, batch_size: int, *, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled mini-batches that take each image from one randomly drawn view.

    The epoch's seed decides both the order and which view each image comes
    from, so every epoch sees a fresh mix of augmentations (and a resumed trial
    sees the same mix as an uninterrupted one).
    """
    if not views:
        raise ValueError("no views to draw from")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    drawn = rng.integers(0, len(views), size=len(y))
    for start in range(0, len(y), batch_size):
        rows = np.sort(order[start : start + batch_size])
        x = np.empty((len(rows), *views[0].shape[1:]), dtype="float32")
        for view in np.unique(drawn[rows]):
            chosen = drawn[rows] == view
            x[chosen] = views[view][rows[chosen]]
        yield x, y[rows]


def run_batches(
    model: keras.Model,
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    *,
    train: bool,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """One pass of ``train_on_batch`` (or ``test_on_batch``) over ``batches``.

    A plain loop instead of ``fit``/``evaluate``: those feed batches through a
    tf.data pipeline whose autotuning thread was seen to hold the end of each
    epoch for up to seconds on a loaded machine, and trials run many short
    epochs.

    Args:
        on_batch: Called with the 0-based index of each batch once it is done.

    Returns:
        The epoch's loss and accuracy, averaged over samples. (Keras resets its
        metrics at every ``*_on_batch`` call, so each call reports one batch.)
    """
    totals: dict[str, float] = {}
    count = 0
    step = model.train_on_batch if train else model.test_on_batch
    for number, (x_batch, y_batch) in enumerate(batches):
        logs = step(x_batch, y_batch, return_dict=True)
        size = len(x_batch)
        for name, value in logs.items():
            totals[name] = totals.get(name, 0.0) + float(value) * size
        count += size
        if on_batch is not None:
            on_batch(number)
    if count == 0:
        raise ValueError("no batches: the split is empty")
    return {name: total / count for name, total in totals.items()}


def entries_for(hparams: Hyperparameters, backbone: str) -> tuple[list[str], list[str]]:
    """The cached entries one trial reads: (cut names, view names of ``FeatureBundle.views``).

    The top cut (phase 1) and the cut below the unfrozen blocks (phase 2), plus
    their augmented views when the trial augments.
    """
    spec = get_backbone(backbone)
    cuts = list(dict.fromkeys([spec.top_cut, spec.cut_for(hparams.unfreeze_blocks)]))
    if hparams.augmentation <= 0:
        return cuts, []
    return cuts, [view_name(cut, hparams.augmentation) for cut in cuts]


class RecipeTrainer:
    """Trains one configuration of the recipe, one epoch per call.

    Args:
        hparams: The trial's hyperparameters.
        setup: Backbone, weights, size, epochs and seed.
        bundle: Cached features (and augmented views, if augmenting) for this dataset.
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
        self.finetune_model: keras.Model | None = None

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
        return 1 if epoch < self.setup.phase_one_epochs else 2

    @property
    def done(self) -> bool:
        return self.epoch >= self.setup.epochs

    @property
    def batches_per_epoch(self) -> int:
        """Training batches in one epoch: how often ``train_epoch`` calls ``on_batch``.

        The same in both phases (and with augmentation: one view per image).
        """
        return math.ceil(len(self._labels["train"]) / self.hparams.batch_size)

    def _ensure_backbone(self) -> keras.Model:
        if self.backbone_model is None:
            self.backbone_model = build_backbone(
                self.setup.backbone, self.setup.weights, self.setup.image_size, self.setup.seed
            )
            # build_backbone reseeds for a random init; training continues from
            # its own seed, offset by the epoch so that resumed runs match.
            keras.utils.set_random_seed(self.setup.seed + 1000 + self.epoch)
        return self.backbone_model

    def _ensure_finetune(self) -> keras.Model:
        if self.finetune_model is None:
            backbone_model = self._ensure_backbone()
            cut_shape = tuple(self.bundle.features(self.cut, "train").shape[1:])
            self.finetune_model = build_finetune_model(
                backbone_model, self.cut, cut_shape, self.head
            )
            self.finetune_model.compile(
                optimizer=keras.optimizers.SGD(
                    learning_rate=self.hparams.finetune_learning_rate,
                    momentum=self.hparams.momentum,
                ),
                loss=loss_for(self.num_classes),
                metrics=["accuracy"],
                # Keras' default: no XLA on CPUs, XLA where a GPU is visible. Forcing
                # XLA was measured on CPU here (TF 2.21, 2 cores): no faster at
                # unfreeze 1, 15-30% slower at unfreeze 2, 10-18x slower per batch at
                # 32 px. GPUs were not measured; there Keras' own choice stands.
            )
        return self.finetune_model

    def train_epoch(self, on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Trains one epoch and evaluates on the validation split.

        Args:
            on_batch: Called with the 0-based index of each training batch once
                it is trained (progress, or fault injection in tests).

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
            model, cut = self.head, self.top_cut
        else:
            model, cut = self._ensure_finetune(), self.cut
        train_y = self._labels["train"]
        if self.hparams.augmentation > 0:
            views = self.bundle.views_of(cut, self.hparams.augmentation)
            batches = view_batches(views, train_y, batch, seed=seed)
        else:
            train_x = self.bundle.features(cut, "train")
            batches = array_batches(train_x, train_y, batch, shuffle=True, seed=seed)
        fit = run_batches(model, batches, train=True, on_batch=on_batch)
        val_x = self.bundle.features(cut, "validation")
        # The head's evaluation is all per-call overhead at small batches; its
        # activations are tiny, so it evaluates in large batches (same metrics:
        # they are averaged over samples). Phase 2 keeps the training batch size,
        # whose activations are known to fit.
        val_batch = max(batch, HEAD_EVALUATION_BATCH) if phase == 1 else batch
        evaluation = run_batches(
            model,
            array_batches(val_x, self._labels["validation"], val_batch, shuffle=False, seed=0),
            train=False,
        )
        self.epoch += 1
        metrics = {
            "epoch": self.epoch,
            "phase": phase,
            "loss": fit["loss"],
            "accuracy": fit["accuracy"],
            "val_loss": evaluation["loss"],
            "val_accuracy": evaluation["accuracy"],
            "epoch_seconds": time.perf_counter() - started,
        }
        self.history.append(metrics)
        return metrics

    def save(self, directory: str | Path) -> None:
        """Writes the trainer's state (weights, optimizer state, progress) to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.head.save_weights(directory / "head.weights.h5")
        if self.finetune_model is not None:
            # With the phase-2 optimizer (SGD) and its momentum.
            self.finetune_model.save_weights(directory / "finetune.weights.h5")
        state = {
            "epoch": self.epoch,
            "history": self.history,
            "finetune": self.finetune_model is not None,
        }
        (directory / "state.json").write_text(json.dumps(state, indent=2))

    def restore(self, directory: str | Path) -> None:
        """Continues from a directory written by ``save``.

        Weights, optimizer state and progress are restored.
        """
        directory = Path(directory)
        state = json.loads((directory / "state.json").read_text())
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        # Optimizer variables are created lazily; build them so that the saved
        # moments have somewhere to go.
        self.head.optimizer.build(self.head.trainable_variables)
        self.head.load_weights(directory / "head.weights.h5")
        if state["finetune"]:
            model = self._ensure_finetune()
            model.optimizer.build(model.trainable_variables)
            model.load_weights(directory / "finetune.weights.h5")

    def inference_model(self) -> keras.Model:
        """The full model (preprocessing, backbone, head) on RGB images in [0, 255]."""
        return build_inference_model(self._ensure_backbone(), self.setup.backbone, self.head)
