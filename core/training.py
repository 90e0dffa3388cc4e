"""The recipe's two training phases, one epoch at a time, on cached features.

Phase 1 trains the head on the top block's cached output. Phase 2 (only when
``unfreeze_blocks > 0``) fine-tunes the top blocks together with that head, with
SGD and momentum at a low learning rate, starting from the cached output of the
block below them. ``RecipeTrainer`` steps one epoch at a time so that a Ray Tune
trial can report and checkpoint after each epoch, and the final training uses
the very same code.

Augmented trials (strength s > 0) get their training inputs at a phase's cut
from one of two sources:

views
    The bundle holds cached views for (cut, s): each epoch draws one view per
    image. Nothing frozen runs, but an image only ever shows V transforms.
fresh
    No views for (cut, s), but the bundle holds the decoded training images:
    every batch is augmented with a new random transform (seeded by the epoch,
    so a resumed trial sees what an uninterrupted one would) and the frozen
    layers below the cut run on it, in inference mode. Costly for a head on the
    top cut (the whole backbone runs), cheap below deep fine-tuning.

Validation is never augmented and always reads the cached features.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from core.backbones import apply_layers, build_backbone, get_backbone, split_layers
from core.features import FeatureBundle, FeatureCacheError, view_name
from core.hyperparameters import Hyperparameters, TrainingSetup
from core.layers import BackbonePreprocess, build_augmentation
from core.model import build_finetune_model, build_head, build_inference_model, loss_for

logger = logging.getLogger(__name__)

HEAD_EVALUATION_BATCH = 512
"""Validation batch of phase 1 (the head on cached features)."""

AUGMENTATION_SOURCES = ("none", "views", "fresh")
"""Where a phase's training inputs come from: plain features, cached views, fresh transforms."""

FreshPairs = Collection[tuple[str, float]]
"""(cut, strength) pairs that trials augment on the fly instead of reading views."""


def fresh_augmentation_seed(seed: int, epoch: int) -> int:
    """Seed of the fresh transforms of one epoch (0-based) of a trial seeded ``seed``.

    ``build_augmentation`` gives its five layers seeds ``s .. s + 4``: a stride
    of 8 keeps every epoch's layers apart from the next epoch's, and the odd
    offset keeps them apart from the views' seeds (multiples of 1_000_003) at
    the epochs trials run.
    """
    return (seed * 100_003 + epoch) * 8 + 5


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


def fresh_batches(
    images: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    augment: keras.Layer,
    frozen: keras.Model,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled mini-batches of freshly augmented images, run through the frozen layers.

    Same order as ``array_batches`` for the same seed. ``augment`` draws new
    random numbers at every call (its layers are seeded), so each batch gets its
    own transforms and the same (seed, batch sizes) give the same transforms.

    Args:
        images: uint8 images (n, size, size, 3), values 0-255.
        augment: Keras augmentation layers, applied in training mode.
        frozen: Images in [0, 255] -> features at the cut (see ``build_frozen_model``).
    """
    order = np.random.default_rng(seed).permutation(len(y))
    for start in range(0, len(y), batch_size):
        rows = np.sort(order[start : start + batch_size])
        augmented = augment(np.asarray(images[rows], dtype="float32"), training=True)
        # A compiled predict step, as FeatureExtractor runs the frozen layers.
        features = frozen.predict_on_batch(keras.ops.convert_to_numpy(augmented))
        yield np.asarray(features, dtype="float32"), y[rows]


def build_frozen_model(backbone_model: keras.Model, backbone: str, cut: str) -> keras.Model:
    """Images in [0, 255] -> the backbone's preprocessing -> its layers up to ``cut``.

    The layers are those of ``backbone_model`` (shared, not copied), so the
    output is the cached features' network; with ``INPUT_CUT`` it is the
    preprocessing alone. Nothing above the cut is part of it.
    """
    prefix, _ = split_layers(backbone_model, cut)
    image = keras.Input(shape=backbone_model.input_shape[1:], name="image")
    x = BackbonePreprocess(backbone, name="preprocess")(image)
    return keras.Model(image, apply_layers(prefix, x), name=f"frozen_to_{cut}")


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


def entries_for(
    hparams: Hyperparameters, backbone: str, *, fresh: FreshPairs = ()
) -> tuple[list[str], list[str]]:
    """The cached entries one trial reads: (cut names, view names of ``FeatureBundle.views``).

    The top cut (phase 1) and the cut below the unfrozen blocks (phase 2), plus
    their augmented views when the trial augments.

    Args:
        fresh: (cut, strength) pairs served by fresh augmentation instead of
            views: their views are left out (the trial then needs the training
            images, see ``needs_images``). Their cuts stay: validation reads them.
    """
    cuts = _trial_cuts(hparams, backbone)
    if hparams.augmentation <= 0:
        return cuts, []
    served_fresh = _fresh_set(fresh)
    strength = float(hparams.augmentation)
    views = [view_name(cut, strength) for cut in cuts if (cut, strength) not in served_fresh]
    return cuts, views


def needs_images(hparams: Hyperparameters, backbone: str, *, fresh: FreshPairs = ()) -> bool:
    """Whether a trial augments on the fly: it needs ``FeatureBundle.images["train"]``."""
    if hparams.augmentation <= 0:
        return False
    served_fresh = _fresh_set(fresh)
    strength = float(hparams.augmentation)
    return any((cut, strength) in served_fresh for cut in _trial_cuts(hparams, backbone))


def _trial_cuts(hparams: Hyperparameters, backbone: str) -> list[str]:
    spec = get_backbone(backbone)
    return list(dict.fromkeys([spec.top_cut, spec.cut_for(hparams.unfreeze_blocks)]))


def _fresh_set(fresh: FreshPairs) -> set[tuple[str, float]]:
    return {(cut, float(strength)) for cut, strength in fresh}


CUSTOM_GRADIENT_PREFIX = "CustomGradient-"
"""How ``tf.custom_gradient`` names the gradient functions it registers (one per graph trace)."""


def _gradient_registry() -> dict[str, Any] | None:
    """TensorFlow's process-wide table of gradient functions (private API; None if it moved)."""
    try:
        from tensorflow.python.framework import ops
    except ImportError:
        return None
    table = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    return table if isinstance(table, dict) else None


def custom_gradient_names() -> frozenset[str]:
    """The ``tf.custom_gradient`` functions registered in this process so far."""
    table = _gradient_registry()
    if table is None:
        return frozenset()
    return frozenset(name for name in table if name.startswith(CUSTOM_GRADIENT_PREFIX))


def forget_custom_gradients(keep: frozenset[str]) -> int:
    """Unregisters the ``tf.custom_gradient`` functions not in ``keep``; returns how many.

    Why: Keras' TensorFlow optimizer sums the gradients over replicas
    (``replica_context.all_reduce``) in every traced training step, and
    TensorFlow wraps that sum in a ``tf.custom_gradient``, which registers a
    gradient function under a new name in a process-wide table that nothing
    ever empties. That function's closure holds the traced step's graph, the
    graph holds the handles of the variables it captured, and so every model
    ever trained in the process keeps its weights and optimizer slots (about
    75 MB for VGG16's top block with SGD momentum), ``clear_session`` or not.
    A registered function is only looked up while a gradient is being traced,
    so unregistering those of models that are gone breaks nothing.
    """
    table = _gradient_registry()
    if table is None:
        logger.debug("TensorFlow's gradient registry was not found: nothing to unregister")
        return 0
    stale = [n for n in table if n.startswith(CUSTOM_GRADIENT_PREFIX) and n not in keep]
    for name in stale:
        del table[name]
    return len(stale)


@dataclass(frozen=True)
class TrainedWeights:
    """A copy of what a trainer's inference model would hold after one epoch.

    Attributes:
        epoch: The epoch (1-based) these weights ended.
        val_accuracy: That epoch's validation accuracy.
        head: The head's weights.
        backbone: The backbone's weights; None while phase 2 has not changed
            them (they are still as built: the seeded init, or the file's).
    """

    epoch: int
    val_accuracy: float
    head: list[np.ndarray]
    backbone: list[np.ndarray] | None


class RecipeTrainer:
    """Trains one configuration of the recipe, one epoch per call.

    Args:
        hparams: The trial's hyperparameters.
        setup: Backbone, weights, size, epochs and seed.
        bundle: Cached features for this dataset and, if augmenting, the views
            of the trial's strength at each of its cuts or the decoded training
            images (used where views are missing).

    Raises:
        FeatureCacheError: an augmented trial has neither views nor training
            images for one of its cuts.
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
        self._closed = False
        # What ``close`` leaves registered: all but this trainer's training steps.
        self._gradients_before = custom_gradient_names()
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
        self.frozen_models: dict[str, keras.Model] = {}
        """The frozen layers up to each cut that fresh augmentation runs, once built."""
        self.epoch_costs: list[dict[str, Any]] = []
        """Per epoch trained by this instance: epoch, phase, source, epoch_seconds and
        fresh_seconds (time spent augmenting and running the frozen layers)."""
        self._sources = {
            cut: self._source_for(cut) for cut in dict.fromkeys([self.top_cut, self.cut])
        }

    def _target(self, labels: np.ndarray) -> np.ndarray:
        if self.num_classes == 2:
            return labels.astype("float32").reshape(-1, 1)
        return labels.astype("int32")

    def _source_for(self, cut: str) -> str:
        strength = self.hparams.augmentation
        if strength <= 0:
            return "none"
        if view_name(cut, strength) in self.bundle.views:
            return "views"
        images = self.bundle.images.get("train")
        if images is None:
            raise FeatureCacheError(
                f"augmentation={strength:g} at cut {cut!r}: the bundle has no views for it "
                f"(it holds {sorted(self.bundle.views) or 'no views'}) and no training images "
                "to augment on the fly (FeatureBundle.images['train'])"
            )
        expected = (len(self._labels["train"]), self.setup.image_size, self.setup.image_size, 3)
        if images.shape != expected or images.dtype != np.uint8:
            raise FeatureCacheError(
                f"bundle images['train'] are {images.dtype} {images.shape}: fresh augmentation "
                f"at cut {cut!r} needs uint8 {expected}, aligned with labels['train']"
            )
        return "fresh"

    def augmentation_source(self, phase: int) -> str:
        """Where one phase's training inputs come from: "none", "views" or "fresh".

        Raises:
            ValueError: phase 2 of a trial that does not fine-tune, or a phase not 1 or 2.
        """
        if phase == 1:
            return self._sources[self.top_cut]
        if phase == 2 and self.fine_tunes:
            return self._sources[self.cut]
        raise ValueError(
            f"phase={phase!r}: this trial has phase 1" + (" and 2" if self.fine_tunes else " only")
        )

    def frozen_model(self, cut: str) -> keras.Model:
        """The frozen layers (preprocessing included) up to ``cut``, built once."""
        if cut not in self.frozen_models:
            self.frozen_models[cut] = build_frozen_model(
                self._ensure_backbone(), self.setup.backbone, cut
            )
        return self.frozen_models[cut]

    def _training_batches(
        self, cut: str, seed: int, fresh_seconds: list[float]
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        train_y, batch = self._labels["train"], self.hparams.batch_size
        source = self._sources[cut]
        if source == "none":
            train_x = self.bundle.features(cut, "train")
            return array_batches(train_x, train_y, batch, shuffle=True, seed=seed)
        if source == "views":
            views = self.bundle.views_of(cut, self.hparams.augmentation)
            return view_batches(views, train_y, batch, seed=seed)
        augment = build_augmentation(
            self.hparams.augmentation, seed=fresh_augmentation_seed(self.setup.seed, self.epoch)
        )
        assert augment is not None  # strength > 0
        batches = fresh_batches(
            self.bundle.images["train"],
            train_y,
            batch,
            seed=seed,
            augment=augment,
            frozen=self.frozen_model(cut),
        )
        return _timed(batches, fresh_seconds)

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
        self._require_open()
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
        fresh_seconds = [0.0]
        batches = self._training_batches(cut, seed, fresh_seconds)
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
        self.epoch_costs.append(
            {
                "epoch": self.epoch,
                "phase": phase,
                "source": self._sources[cut],
                "epoch_seconds": metrics["epoch_seconds"],
                "fresh_seconds": fresh_seconds[0],
            }
        )
        return metrics

    def save(self, directory: str | Path) -> None:
        """Writes the trainer's state (weights, optimizer state, progress) to ``directory``."""
        self._require_open()
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
        self._require_open()
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

    def weights(self) -> TrainedWeights:
        """A copy of the weights as the last epoch left them (``restore_weights`` puts it back)."""
        self._require_open()
        if not self.history:
            raise RuntimeError("no epoch is trained yet")
        # Phase 2 trains the backbone's top blocks in place (the fine-tuning model
        # shares its layers); before it, the backbone is as built.
        trained = self.backbone_model if self.finetune_model is not None else None
        return TrainedWeights(
            epoch=self.epoch,
            val_accuracy=float(self.history[-1]["val_accuracy"]),
            head=self.head.get_weights(),
            backbone=trained.get_weights() if trained is not None else None,
        )

    def restore_weights(self, weights: TrainedWeights) -> None:
        """Puts back the head and backbone weights of an earlier ``weights()``.

        For the model ``inference_model`` assembles, as Keras'
        ``EarlyStopping(restore_best_weights=True)`` does; the optimizer's state
        and ``epoch`` stay where training left them.
        """
        self._require_open()
        self.head.set_weights(weights.head)
        if weights.backbone is not None:
            self._ensure_backbone().set_weights(weights.backbone)
        elif self.finetune_model is not None and self.backbone_model is not None:
            # Phase 2 changed the backbone after those weights: back to it as built.
            built = build_backbone(
                self.setup.backbone, self.setup.weights, self.setup.image_size, self.setup.seed
            )
            self.backbone_model.set_weights(built.get_weights())

    def inference_model(self) -> keras.Model:
        """The full model (preprocessing, backbone, head) on RGB images in [0, 255]."""
        self._require_open()
        return build_inference_model(self._ensure_backbone(), self.setup.backbone, self.head)

    def close(self) -> None:
        """Frees the trainer's models and what TensorFlow keeps of their training steps.

        A process that trains one trial after another (Ray Tune's
        ``reuse_actors``) calls it at the end of each, so that the process's
        memory stays flat: without it, each trained model stays in memory for
        the process's life (see ``forget_custom_gradients``). It resets Keras'
        global state (``clear_session``), so a model built elsewhere in the
        process must not be training meanwhile. ``history`` and
        ``epoch_costs`` stay readable; training, saving or exporting afterwards
        is not possible. Closing twice does nothing.
        """
        if self._closed:
            return
        self._closed = True
        forget_custom_gradients(self._gradients_before)
        self.frozen_models.clear()
        self.finetune_model = None
        self.backbone_model = None
        del self.head
        # Keras models are reference cycles: clear_session collects them now (one
        # full gc.collect, about 0.3 s with TensorFlow loaded), not at some later trial.
        keras.backend.clear_session(free_memory=True)

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError("the trainer is closed: its models are gone")


def _timed(
    batches: Iterator[tuple[np.ndarray, np.ndarray]], seconds: list[float]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Passes ``batches`` on, adding the time spent producing them to ``seconds[0]``."""
    while True:
        started = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            seconds[0] += time.perf_counter() - started
            return
        seconds[0] += time.perf_counter() - started
        yield batch
