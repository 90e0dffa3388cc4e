"""bottletune against KerasTuner and a plain Ray Tune search: same data, space, budget and seed.

Three sides search the same hyperparameters (a ``search_spaces`` preset) on the
same synthetic shapes, each for the same wall-time budget, one after another
on this machine:

bottletune
    ``tuning.search.run_search`` on an empty cache: the feature cache, Optuna
    TPE and ASHA. Its clock includes building the cache, as ``bottletune tune``
    does it (the plain top cut first, the views while the first trials run).
    The ASHA-vs-FIFO and TPE-vs-random variants reuse that cache, their clocks
    starting as early as the cold search's first trial waited for the plain
    pass (the part of it that trial's own start-up did not hide).
keras-tuner
    KerasTuner's Hyperband as its users write it: a ``HyperModel`` whose
    ``build(hp)`` returns the whole model on images (augmentation layers, the
    backbone frozen below its top ``unfreeze_blocks`` blocks, the head), and
    whose ``fit`` trains it with ``model.fit`` in the recipe's two phases.
    KerasTuner runs one trial at a time, with every core.
ray-tune
    A plain Ray Tune function trainable that builds that same model on images
    in every trial and reports ``val_accuracy`` each epoch, searched by
    ``OptunaSearch`` (TPE, seeded) with ``ASHAScheduler``: bottletune without
    the cache.

Reported, as ratios where bottletune is the reference (above 1: bottletune is
ahead): the time each side takes to reach a target validation accuracy (by
default the worst side's best, which every side reaches), and each side's best
validation accuracy at the same wall times; inside bottletune, ASHA against
FIFO and TPE against random (extra runs); each side's final model, trained as
that tool's users would, on a test split no side saw; and whether keeping a
trial's best epoch (KerasTuner's choice) beats its last (bottletune's).

A side's curve holds every epoch any trial reported (the best-so-far over all
of them, whichever tool's own best-trial rule). Ray Tune's report timestamps
are whole seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    BACKBONE,
    IMG_DIR,
    SEED,
    WEIGHTS,
    add_output_flags,
    extraction_record,
    load_average,
    machine_info,
    machine_line,
    markdown_table,
    positive_int,
    setup_logging,
    text_table,
    update_doc_section,
    write_results,
)

logger = logging.getLogger(__name__)

METRIC = "val_accuracy"
REFERENCE = "bottletune"
SIDES = ("bottletune", "keras-tuner", "ray-tune")
VARIANTS = ("bottletune-fifo", "bottletune-random")
"""Extra bottletune runs: ASHA with no rung before the end (FIFO), and random sampling."""
UNBOUNDED_TRIALS = 10_000
"""Trials a search may start: the time budget, not this, ends every search."""

Curve = list[tuple[float, float]]
"""(seconds since the side started, validation accuracy) of every epoch reported."""


@dataclass(frozen=True)
class Scale:
    """Everything ``--scale`` sets; each field can be overridden by its flag."""

    budget: float
    size: int
    classes: int
    per_class: int
    epochs: int
    head_epochs: int
    grace_period: int
    views: int


SCALES: dict[str, Scale] = {
    # A smoke run: about 5 minutes on 2 CPU cores. Ray trials take 10-20 s to
    # start TensorFlow there, so a shorter budget leaves the Ray sides no epoch.
    "small": Scale(
        budget=45.0,
        size=32,
        classes=2,
        per_class=24,
        epochs=3,
        head_epochs=1,
        grace_period=2,
        views=2,
    ),
    # About 32 minutes on 2 CPU cores (five searches of 5 minutes, then final training).
    # At 96 px an uncached epoch costs enough that the cache shows; at 48 px Ray's
    # and each trial's start-up (about 30 s) decided the race.
    "full": Scale(
        budget=300.0,
        size=96,
        classes=2,
        per_class=100,
        epochs=6,
        head_epochs=2,
        grace_period=3,
        views=2,
    ),
}


# Arguments


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number > 0")
    return value


def accuracy_value(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an accuracy in (0, 1]")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description="bottletune against KerasTuner Hyperband and a plain Ray Tune search.",
    )
    parser.add_argument(
        "--scale",
        choices=tuple(SCALES),
        default="full",
        help="small: a smoke run of a few minutes; full: about 32 minutes on 2 cores",
    )
    parser.add_argument("--budget", type=positive_float, help="seconds per search")
    parser.add_argument("--size", type=positive_int, help="image side in px")
    parser.add_argument("--classes", type=positive_int, help="classes of synthetic shapes")
    parser.add_argument("--per-class", type=positive_int, help="training images per class")
    parser.add_argument("--epochs", type=positive_int, help="max epochs per trial")
    parser.add_argument("--head-epochs", type=positive_int, help="phase-1 epochs")
    parser.add_argument("--grace-period", type=positive_int, help="ASHA's grace period")
    parser.add_argument("--views", type=positive_int, help="bottletune's augmentation_views")
    parser.add_argument(
        "--reduction-factor",
        type=positive_int,
        default=3,
        help="ASHA's reduction factor and Hyperband's factor",
    )
    parser.add_argument("--space", default="recipe", help="search-space preset or YAML file")
    parser.add_argument("--cpus", type=positive_int, default=2, help="CPUs of the machine")
    parser.add_argument(
        "--target",
        type=accuracy_value,
        help="validation accuracy to reach (default: the worst side's best)",
    )
    parser.add_argument(
        "--samples", type=positive_int, default=20, help="time points of the equal-time table"
    )
    parser.add_argument(
        "--no-variants", action="store_true", help="skip the ASHA-vs-FIFO and TPE-vs-random runs"
    )
    add_output_flags(parser, "peers")
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]
    for name, value in vars(scale).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.classes < 2:
        parser.error(f"--classes {args.classes}: must be at least 2")
    if args.grace_period > args.epochs:
        parser.error(f"--grace-period {args.grace_period}: must be at most --epochs {args.epochs}")
    return args


# Curves (pure: the tests check them on synthetic curves)


def best_so_far(curve: Sequence[tuple[float, float]]) -> Curve:
    """The points where the best accuracy so far improves, in time order."""
    steps: Curve = []
    for seconds, value in sorted(curve):
        if not steps or value > steps[-1][1]:
            steps.append((float(seconds), float(value)))
    return steps


def best_at(curve: Sequence[tuple[float, float]], seconds: float) -> float | None:
    """The best accuracy reported by ``seconds`` (None before the first report)."""
    values = [value for at, value in curve if at <= seconds]
    return max(values) if values else None


def time_to_reach(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """The first time an accuracy of at least ``target`` was reported (None: never)."""
    times = [at for at, value in curve if value >= target]
    return min(times) if times else None


def sample_times(end: float, count: int) -> list[float]:
    """``count`` evenly spaced times in (0, end], the last one ``end``."""
    if end <= 0 or count < 1:
        raise ValueError(f"end={end}, count={count}: need end > 0 and count >= 1")
    return [end * (i + 1) / count for i in range(count)]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def compare_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    reference: str,
    *,
    end: float,
    samples: int,
    target: float | None = None,
) -> dict[str, Any]:
    """Time to a target accuracy and best accuracy at equal wall time, against ``reference``.

    Args:
        curves: Side -> every (seconds, accuracy) it reported.
        reference: The side the ratios divide by (time) or into (accuracy).
        end: The last time compared: no later than the shortest side's search.
        samples: Time points of the equal-time comparison.
        target: The accuracy to reach; None for the worst side's best, which
            every side reaches.

    Returns:
        target; per side its best, time to target and ``time_ratio`` (side's
        time / reference's: above 1, the reference got there sooner); and at
        each time point every side's best so far with ``accuracy_ratio``
        (reference's / side's: above 1, the reference is ahead).
    """
    if reference not in curves:
        raise ValueError(f"reference {reference!r} is not one of {', '.join(curves)}")
    empty = [side for side, curve in curves.items() if not curve]
    if empty:
        raise ValueError(f"no epoch reported by {', '.join(empty)}")
    bests = {side: max(value for _, value in curve) for side, curve in curves.items()}
    goal = min(bests.values()) if target is None else target
    reached = {side: time_to_reach(curve, goal) for side, curve in curves.items()}
    sides = {
        side: {
            "best_val_accuracy": bests[side],
            "time_to_target": reached[side],
            "time_ratio": ratio(reached[side], reached[reference]),
        }
        for side in curves
    }
    points = []
    for seconds in sample_times(end, samples):
        best = {side: best_at(curve, seconds) for side, curve in curves.items()}
        points.append(
            {
                "seconds": seconds,
                "best": best,
                "accuracy_ratio": {side: ratio(best[reference], best[side]) for side in curves},
            }
        )
    return {"target": goal, "reference": reference, "end": end, "sides": sides, "points": points}


def epoch_choice(histories: Sequence[Sequence[float]]) -> dict[str, Any]:
    """A trial judged by its last epoch (bottletune, Ray Tune) or its best (KerasTuner).

    Args:
        histories: Each trial's validation accuracy per epoch.

    Returns:
        Mean last and best epoch, the mean gain of taking the best, how many
        trials gain, and the search's best trial under each rule.
    """
    scored = [list(history) for history in histories if history]
    if not scored:
        raise ValueError("no trial reported an epoch")
    last = [history[-1] for history in scored]
    best = [max(history) for history in scored]
    return {
        "trials": len(scored),
        "mean_last": statistics.fmean(last),
        "mean_best": statistics.fmean(best),
        "mean_gain": statistics.fmean(b - a for a, b in zip(last, best, strict=True)),
        "trials_gaining": sum(1 for a, b in zip(last, best, strict=True) if b > a),
        "search_best_last": max(last),
        "search_best_any_epoch": max(best),
    }


# Data and the image model the KerasTuner and Ray Tune sides train


@dataclass(frozen=True)
class Images:
    """Decoded splits (uint8 images, int labels) and the class names."""

    train: np.ndarray
    train_labels: np.ndarray
    validation: np.ndarray
    validation_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def decode_splits(data_dir: Path, image_size: int) -> Images:
    """The three splits of a Keras-layout dataset, decoded at ``image_size``."""
    from core.data import load_images, scan_dataset

    index = scan_dataset(data_dir, seed=SEED)
    loaded = {split: load_images(index.splits[split], image_size) for split in index.splits}
    return Images(
        train=loaded["train"].images,
        train_labels=loaded["train"].labels,
        validation=loaded["validation"].images,
        validation_labels=loaded["validation"].labels,
        test=loaded["test"].images,
        test_labels=loaded["test"].labels,
        class_names=tuple(index.class_names),
    )


def targets(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels as the recipe's loss takes them: a float column for one sigmoid unit."""
    return labels.astype("float32").reshape(-1, 1) if num_classes == 2 else labels


def build_image_model(hparams: Any, setup: Any, num_classes: int) -> Any:
    """The recipe's whole model on images, compiled for phase 1 (the backbone frozen).

    RGB images -> augmentation layers (when ``hparams.augmentation`` > 0) ->
    the backbone's preprocessing -> the backbone's layers -> the dense head;
    seeded as bottletune's trainer seeds its backbone and head.
    """
    import keras

    from core.backbones import apply_layers, build_backbone, split_layers
    from core.layers import BackbonePreprocess, build_augmentation
    from core.model import build_head, freeze, loss_for

    backbone = build_backbone(setup.backbone, setup.weights, setup.image_size, seed=setup.seed)
    # The head's init as RecipeTrainer's: on random-init features, which init a
    # head starts from decides whether it learns in a few epochs (measured at
    # 48 px: 3 of 12 seeds did), so the sides must not differ in it.
    keras.utils.set_random_seed(setup.seed)
    head = build_head(tuple(backbone.output.shape[1:]), num_classes, hparams)
    keras.utils.set_random_seed(setup.seed + 1000)
    image = keras.Input(shape=(setup.image_size, setup.image_size, 3), name="image")
    augment = build_augmentation(hparams.augmentation, seed=setup.seed)
    x = augment(image) if augment is not None else image
    _, layers = split_layers(backbone, "input")
    model = keras.Model(image, head(apply_layers(layers, BackbonePreprocess(setup.backbone)(x))))
    freeze(layers)
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=hparams.head_learning_rate),
        loss=loss_for(num_classes),
        metrics=["accuracy"],
    )
    return model


def start_fine_tuning(model: Any, hparams: Any, backbone: str, num_classes: int) -> None:
    """Phase 2: unfreezes the top ``unfreeze_blocks`` blocks and recompiles with SGD."""
    import keras

    from core.backbones import get_backbone
    from core.model import freeze, loss_for, unfreeze

    cut = get_backbone(backbone).cut_for(hparams.unfreeze_blocks)
    names = [layer.name for layer in model.layers]
    above = names.index(cut) + 1
    freeze(model.layers[:above])
    unfreeze([layer for layer in model.layers[above:] if layer.name != "head"])
    model.get_layer("head").trainable = True
    model.compile(
        optimizer=keras.optimizers.SGD(
            learning_rate=hparams.finetune_learning_rate, momentum=hparams.momentum
        ),
        loss=loss_for(num_classes),
        metrics=["accuracy"],
    )


def switch_epoch(hparams: Any, setup: Any) -> int:
    """The 0-based epoch phase 2 starts at (``setup.epochs`` for a head-only trial)."""
    return setup.phase_one_epochs if hparams.unfreeze_blocks else setup.epochs


def held_out_accuracy(model: Any, images: Images) -> float:
    """Accuracy on the test split, which no search saw."""
    from core.inference import probabilities

    predicted = probabilities(model, images.test).argmax(axis=1)
    return float(np.mean(predicted == images.test_labels))


def train_on_images(
    hparams: Any,
    setup: Any,
    images: Images,
    *,
    epochs: int,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> Any:
    """Trains the image model for ``epochs`` with ``model.fit``, switching phase on schedule."""
    model = build_image_model(hparams, setup, images.num_classes)
    train_y = targets(images.train_labels, images.num_classes)
    validation = (
        images.validation.astype("float32"),
        targets(images.validation_labels, images.num_classes),
    )
    train_x = images.train.astype("float32")
    switch = switch_epoch(hparams, setup)
    for epoch in range(epochs):
        if epoch == switch:
            start_fine_tuning(model, hparams, setup.backbone, images.num_classes)
        history = model.fit(
            train_x,
            train_y,
            batch_size=hparams.batch_size,
            epochs=epoch + 1,
            initial_epoch=epoch,
            validation_data=validation,
            shuffle=True,
            verbose=0,
        )
        if on_epoch is not None:
            on_epoch(epoch, {name: values[-1] for name, values in history.history.items()})
    return model


# bottletune


def bottletune_config(args: argparse.Namespace, cache_dir: Path, **changes: Any) -> Any:
    from tuning.config import load_config

    return load_config(
        overrides={
            "backbone": BACKBONE,
            "weights": WEIGHTS,
            "image_size": args.size,
            "num_samples": UNBOUNDED_TRIALS,
            "max_epochs": args.epochs,
            "head_epochs": args.head_epochs,
            "grace_period": args.grace_period,
            "reduction_factor": args.reduction_factor,
            "sampler": "tpe",
            "seed": SEED,
            "max_concurrent_trials": args.cpus,
            "cpus_per_trial": 1,
            "cache_dir": str(cache_dir),
            "space": args.space,
            "include_dashboard": False,
            "augmentation_views": args.views,
            **changes,
        }
    )


def reported_epochs(trial_dir: Path) -> list[dict[str, Any]]:
    """Every report of one Ray Tune trial, from Ray Tune's own ``result.json``."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as error:
            raise ValueError(f"{path}, line {number}: not JSON ({error})") from error
    return [row for row in rows if row.get(METRIC) is not None]


def ray_curve(trial_dirs: Sequence[Path], started: float) -> Curve:
    """Every epoch of these trials as (seconds since ``started`` (a time.time()), accuracy)."""
    return sorted(
        (max(0.0, float(row["timestamp"]) - started), float(row[METRIC]))
        for trial_dir in trial_dirs
        for row in reported_epochs(trial_dir)
        if math.isfinite(float(row[METRIC]))
    )


def plain_wait_seconds(trial_dirs: Sequence[Path]) -> float:
    """How long the search's first trial waited for its features (its ``startup_fetch_s``).

    On a cold cache that is the part of the plain pass its own start-up did not hide.
    """
    firsts = [rows[0] for rows in map(reported_epochs, trial_dirs) if rows]
    if not firsts:
        return 0.0
    earliest = min(firsts, key=lambda row: float(row["timestamp"]))
    return float(earliest.get("startup_fetch_s") or 0.0)


def run_bottletune(
    name: str,
    config: Any,
    data_dir: Path,
    run_dir: Path,
    *,
    budget: float,
    cpus: int,
    cache_seconds: float | None = None,
) -> dict[str, Any]:
    """One bottletune search, its clock and budget counting the cache and Ray's start.

    Args:
        cache_seconds: None: the cache is empty and ``run_search`` builds it as
            ``bottletune tune`` does (the plain top cut first, the views while
            trials run). A number: the cache is warm, and this run's clock starts
            that many seconds early: what a cold search's first trial waited for
            the plain pass (its views, built while trials ran, are not counted).
    """
    from cluster import connect, shutdown
    from tuning.run_dir import RunDirError
    from tuning.search import run_search

    started_wall, started = time.time(), time.perf_counter()
    if cache_seconds is not None:
        started_wall -= cache_seconds
        started -= cache_seconds
    # Ray starts here, so that the budget Tune gets is what a warm cache's
    # recorded build and Ray's start leave of this side's budget (run_search
    # joins this Ray; on a cold cache it builds the plain pass in it too).
    info = connect(None, num_cpus=cpus, include_dashboard=False)
    try:
        left = budget - (time.perf_counter() - started)
        if left < 0.1 * budget:
            logger.warning(
                "%s: the cache and Ray's start took %.0f s of the %.0f s budget; the search "
                "still gets %.0f s",
                name,
                budget - left,
                budget,
                0.1 * budget,
            )
        config = config.replace(time_budget_s=max(left, 0.1 * budget))
        try:
            result = run_search(config, data_dir, run_dir, num_cpus=cpus, progress=False)
        except RunDirError as error:
            raise RunDirError(
                f"{name}: {error} within time_budget_s={config.schedule.time_budget_s:.0f}; "
                "give the searches more time (--budget)"
            ) from error
    finally:
        shutdown(info)
    trials = result.trials
    return {
        "side": name,
        "seconds": time.perf_counter() - started,
        "cache_seconds": cache_seconds,
        # What this (cold) search built; a warm one's clock started early instead.
        "extraction": (
            extraction_record(Path(config.cache_location)) if cache_seconds is None else None
        ),
        "plain_wait_s": plain_wait_seconds([Path(t.path) for t in trials]),
        "trials": len(trials),
        "epochs_trained": sum(t.epochs for t in trials),
        "best_val_accuracy": result.best.val_accuracy,
        "best_hyperparameters": result.best.hyperparameters.to_dict(),
        "curve": ray_curve([Path(t.path) for t in trials], started_wall),
        "histories": [
            [float(row[METRIC]) for row in t.history if row.get(METRIC) is not None] for t in trials
        ],
        "run_dir": str(run_dir),
    }


def bottletune_final(run_dir: Path, data_dir: Path, cache_dir: Path, out: Path) -> dict[str, Any]:
    """Final training as a bottletune user does it: export, then ``train_final``."""
    from tuning.export import export_best
    from tuning.final import train_final

    export_best(run_dir, out / "best.json")
    started = time.perf_counter()
    metrics = train_final(
        out / "best.json", data_dir, out / "model", cache_dir=cache_dir, progress=False
    )
    return {
        "test_accuracy": metrics.test_accuracy,
        "validation_accuracy": metrics.validation_accuracy,
        "epochs": metrics.epochs,
        "seconds": time.perf_counter() - started,
        "how": (
            "tuning.final.train_final on the exported best trial (its default: the best "
            "validation epoch's weights)"
        ),
    }


def final_epoch_choice(best_path: Path, data_dir: Path, cache_dir: Path, images: Images) -> dict:
    """train_final's training again: test accuracy of the last epoch's and the best epoch's weights.

    ``RecipeTrainer.weights`` copies the weights in memory after each better
    epoch (as ``train_final`` does), so training itself runs exactly as there.
    """
    from core.data import scan_dataset
    from core.features import FeatureCache
    from core.training import RecipeTrainer
    from tuning.run_dir import BestConfig

    config = BestConfig.read(best_path)
    index = scan_dataset(data_dir, config.validation_fraction, config.seed)
    bundle = FeatureCache(cache_dir).ensure(index, config.feature_request(), progress=False)
    trainer = RecipeTrainer(config.hyperparameters, config.training_setup(), bundle)
    best = None
    while not trainer.done:
        metrics = trainer.train_epoch()
        if best is None or metrics["val_accuracy"] > best.val_accuracy:
            best = trainer.weights()
    assert best is not None
    model = trainer.inference_model()
    last_val = trainer.history[-1]["val_accuracy"]
    last_test = held_out_accuracy(model, images)
    trainer.restore_weights(best)  # the same model's layers: it now holds the best epoch's
    return {
        "epochs": trainer.epoch,
        "best_epoch": best.epoch,
        "last_val_accuracy": last_val,
        "best_val_accuracy": best.val_accuracy,
        "last_test_accuracy": last_test,
        "best_test_accuracy": held_out_accuracy(model, images),
    }


# KerasTuner


def run_keras_tuner(
    args: argparse.Namespace, data_dir: Path, work_dir: Path, setup: Any
) -> dict[str, Any]:
    """KerasTuner Hyperband on the image model, stopped at the budget; then its best model."""
    from core.runtime import configure_tensorflow

    configure_tensorflow(args.cpus)
    import keras
    import keras_tuner

    from core.hyperparameters import Hyperparameters
    from search_spaces import load_space, to_keras_tuner

    started = time.perf_counter()
    deadline = started + args.budget
    images = decode_splits(data_dir, args.size)
    space = load_space(args.space)
    num_classes = images.num_classes
    curve: Curve = []

    class EpochClock(keras.callbacks.Callback):
        """Records every epoch of the search, and stops the running trial at the deadline."""

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            now = time.perf_counter()
            if logs and METRIC in logs:
                curve.append((now - started, float(logs[METRIC])))
            if now >= deadline:
                self.model.stop_training = True

    clock = EpochClock()

    class RecipeHyperModel(keras_tuner.HyperModel):
        """The recipe as a hypermodel: build the model, then fit phase 1 and phase 2."""

        def build(self, hp: Any) -> Any:
            hparams = Hyperparameters.from_mapping(to_keras_tuner(space, hp))
            return build_image_model(hparams, setup, num_classes)

        def fit(self, hp: Any, model: Any, *fit_args: Any, **kwargs: Any) -> Any:
            hparams = Hyperparameters.from_mapping(hp.values)
            epochs, initial = kwargs.pop("epochs"), kwargs.pop("initial_epoch", 0)
            callbacks = [*kwargs.pop("callbacks", []), clock]
            switch = switch_epoch(hparams, setup)
            merged = keras.callbacks.History()
            merged.history = {}
            phases = [(initial, min(epochs, switch)), (max(initial, switch), epochs)]
            for number, (first, last) in enumerate(phases):
                if first >= last:
                    continue
                if number == 1:
                    if merged.history and time.perf_counter() >= deadline:
                        break  # as EpochClock stopped phase 1: every trial trains an epoch
                    start_fine_tuning(model, hparams, setup.backbone, num_classes)
                history = model.fit(
                    *fit_args,
                    epochs=last,
                    initial_epoch=first,
                    batch_size=hparams.batch_size,
                    callbacks=callbacks,
                    **kwargs,
                )
                for name, values in history.history.items():
                    merged.history.setdefault(name, []).extend(values)
            return merged

    class BudgetedHyperband(keras_tuner.Hyperband):
        """Hyperband that starts no trial after the deadline (as Ray Tune's time_budget_s)."""

        def pre_create_trial(self) -> None:
            if time.perf_counter() >= deadline:
                self.oracle.max_trials = max(1, len(self.oracle.trials))

    tuner = BudgetedHyperband(
        RecipeHyperModel(),
        objective="val_accuracy",
        max_epochs=args.epochs,
        factor=args.reduction_factor,
        hyperband_iterations=UNBOUNDED_TRIALS,
        seed=SEED,
        directory=str(work_dir),
        project_name="hyperband",
        overwrite=True,
    )
    tuner.search(
        images.train.astype("float32"),
        targets(images.train_labels, num_classes),
        validation_data=(
            images.validation.astype("float32"),
            targets(images.validation_labels, num_classes),
        ),
        verbose=0,
    )
    seconds = time.perf_counter() - started
    trials = list(tuner.oracle.trials.values())
    best_trial = tuner.oracle.get_best_trials(1)[0]
    final_started = time.perf_counter()
    best_model = tuner.get_best_models(1)[0]
    final = {
        "test_accuracy": held_out_accuracy(best_model, images),
        "seconds": time.perf_counter() - final_started,
        "how": "tuner.get_best_models(1): the best trial's best-epoch weights, no retraining",
    }
    return {
        "side": "keras-tuner",
        "seconds": seconds,
        "trials": len(trials),
        "epochs_trained": len(curve),
        "best_val_accuracy": best_trial.score,
        "best_hyperparameters": Hyperparameters.from_mapping(
            best_trial.hyperparameters.values
        ).to_dict(),
        "curve": curve,
        "final": final,
    }


# Ray Tune without the cache


def image_trainable(config: dict[str, Any], *, images: Images, setup: Any) -> None:
    """A plain Ray Tune trial: the whole model on images, one report per epoch."""
    from ray import tune

    from core.runtime import configure_tensorflow

    configure_tensorflow(1)
    from core.hyperparameters import Hyperparameters

    train_on_images(
        Hyperparameters.from_mapping(config),
        setup,
        images,
        epochs=setup.epochs,
        on_epoch=lambda epoch, logs: tune.report(
            {METRIC: logs["val_accuracy"], "val_loss": logs["val_loss"], "loss": logs["loss"]}
        ),
    )


def run_ray_tune(
    args: argparse.Namespace, data_dir: Path, work_dir: Path, setup: Any
) -> dict[str, Any]:
    """OptunaSearch (TPE) + ASHA on the image trainable; then the best config retrained."""
    from cluster import connect, shutdown

    started_wall, started = time.time(), time.perf_counter()
    images = decode_splits(data_dir, args.size)
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from core.hyperparameters import Hyperparameters
    from search_spaces import load_space, to_optuna
    from tuning.samplers import make_sampler

    info = connect(None, num_cpus=args.cpus, include_dashboard=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(
                tune.with_parameters(image_trainable, images=images, setup=setup), {"cpu": 1}
            ),
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                search_alg=OptunaSearch(
                    space=to_optuna(load_space(args.space)),
                    metric=METRIC,
                    mode="max",
                    sampler=make_sampler("tpe", SEED),
                ),
                scheduler=ASHAScheduler(
                    time_attr="training_iteration",
                    max_t=args.epochs,
                    grace_period=args.grace_period,
                    reduction_factor=args.reduction_factor,
                ),
                num_samples=UNBOUNDED_TRIALS,
                max_concurrent_trials=args.cpus,
                time_budget_s=max(0.1 * args.budget, args.budget - (time.perf_counter() - started)),
            ),
            run_config=tune.RunConfig(name="ray-tune", storage_path=str(work_dir), verbose=0),
        )
        grid = tuner.fit()
    finally:
        shutdown(info)
    seconds = time.perf_counter() - started
    results = [grid[i] for i in range(len(grid))]
    best = grid.get_best_result(metric=METRIC, mode="max", scope="last")
    if best.config is None or best.metrics is None:
        raise RuntimeError(f"Ray Tune's search in {work_dir} has no trial with a {METRIC}")
    hparams = Hyperparameters.from_mapping(best.config)
    best_metrics = best.metrics
    epochs = int(best_metrics["training_iteration"])
    final_started = time.perf_counter()
    model = train_on_images(hparams, setup, images, epochs=epochs)
    final = {
        "test_accuracy": held_out_accuracy(model, images),
        "epochs": epochs,
        "seconds": time.perf_counter() - final_started,
        "how": "the best config (scope last) retrained from scratch for its epochs",
    }
    return {
        "side": "ray-tune",
        "seconds": seconds,
        "trials": len(results),
        "epochs_trained": sum(int((r.metrics or {}).get("training_iteration", 0)) for r in results),
        "best_val_accuracy": float(best_metrics[METRIC]),
        "best_hyperparameters": hparams.to_dict(),
        "curve": ray_curve([Path(r.path) for r in results], started_wall),
        "final": final,
    }


# Report


def plot(runs: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    for name, run in runs.items():
        steps = best_so_far(run["curve"])
        if not steps:
            continue
        times = [t for t, _ in steps] + [run["seconds"]]
        values = [v for _, v in steps] + [steps[-1][1]]
        axes.step(times, values, where="post", label=name, linestyle="-" if name in SIDES else "--")
    axes.set_xlabel("wall time since the side started (s)")
    axes.set_ylabel("best validation accuracy so far")
    axes.set_title("same data, space, budget and seed")
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def cell(value: float | None, digits: int = 3, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def side_rows(runs: Mapping[str, Any], comparison: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, side in comparison["sides"].items():
        run = runs[name]
        rows.append(
            [
                name,
                f"{run['seconds']:.0f}",
                str(run["trials"]),
                str(run["epochs_trained"]),
                cell(side["best_val_accuracy"]),
                cell(side["time_to_target"], 0),
                cell(side["time_ratio"], 2, "×"),
                cell(run.get("final", {}).get("test_accuracy")),
            ]
        )
    return rows


def equal_time_rows(comparison: dict[str, Any], shown: int = 5) -> list[list[str]]:
    points = comparison["points"]
    step = max(1, len(points) // shown)
    chosen = points[step - 1 :: step][:shown]
    if points[-1] not in chosen:
        chosen[-1] = points[-1]
    rows = []
    for point in chosen:
        row = [f"{point['seconds']:.0f}"]
        row += [cell(point["best"][side]) for side in comparison["sides"]]
        row += [
            cell(point["accuracy_ratio"][side], 2, "×")
            for side in comparison["sides"]
            if side != comparison["reference"]
        ]
        rows.append(row)
    return rows


def require_tensorboard() -> None:
    """KerasTuner's ``Tuner`` imports tensorboard on the TensorFlow backend, which TF 2.21
    no longer installs: fail before any search rather than after the first one."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ModuleNotFoundError(
            "keras_tuner.Hyperband imports tensorboard in every trial (TensorFlow backend) and "
            "it is not installed: pip install tensorboard (make bench-peers installs it)"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    require_tensorboard()
    from cluster import prefer_loopback

    prefer_loopback()  # before anything imports ray, as the CLI does
    from core.runtime import configure_tensorflow

    configure_tensorflow(args.cpus)  # the driver trains the KerasTuner side and final models
    # Imported before any side's clock, as TensorFlow is: otherwise the side that
    # runs first (bottletune) would pay for importing Ray Tune and Optuna alone.
    import optuna  # noqa: F401
    import ray.tune  # noqa: F401

    from core.demo_data import make_demo_data
    from core.hyperparameters import TrainingSetup

    machine = machine_info()
    setup = TrainingSetup(
        backbone=BACKBONE,
        weights=WEIGHTS,
        image_size=args.size,
        epochs=args.epochs,
        head_epochs=args.head_epochs,
        seed=SEED,
    )
    started = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bottletune-bench-peers-") as scratch:
        root = Path(scratch)
        data_dir, cache_dir = root / "data", root / "cache"
        make_demo_data(
            data_dir, classes=args.classes, per_class=args.per_class, size=args.size, seed=SEED
        )
        config = bottletune_config(args, cache_dir)
        logger.info("bottletune: cache, TPE and ASHA, %.0f s...", args.budget)
        runs["bottletune"] = run_bottletune(
            "bottletune", config, data_dir, root / "bottletune", budget=args.budget, cpus=args.cpus
        )
        logger.info("KerasTuner Hyperband on images, %.0f s...", args.budget)
        runs["keras-tuner"] = run_keras_tuner(args, data_dir, root / "keras-tuner", setup)
        logger.info("Ray Tune (TPE + ASHA) on images, %.0f s...", args.budget)
        runs["ray-tune"] = run_ray_tune(args, data_dir, root / "ray-tune", setup)
        if not args.no_variants:
            variants = {
                # No rung before the last epoch: ASHA stops nothing, as FIFO.
                "bottletune-fifo": {"grace_period": args.epochs},
                "bottletune-random": {"sampler": "random"},
            }
            for name, changes in variants.items():
                logger.info("%s, %.0f s...", name, args.budget)
                runs[name] = run_bottletune(
                    name,
                    config.replace(**changes),
                    data_dir,
                    root / name,
                    budget=args.budget,
                    cpus=args.cpus,
                    cache_seconds=runs["bottletune"]["plain_wait_s"],
                )
        logger.info("bottletune's final model...")
        images = decode_splits(data_dir, args.size)
        final_dir = root / "final"
        runs["bottletune"]["final"] = bottletune_final(
            root / "bottletune", data_dir, cache_dir, final_dir
        )
        final_choice = final_epoch_choice(final_dir / "best.json", data_dir, cache_dir, images)
    end = min(runs[side]["seconds"] for side in SIDES)
    comparison = compare_curves(
        {side: runs[side]["curve"] for side in SIDES},
        REFERENCE,
        end=end,
        samples=args.samples,
        target=args.target,
    )
    inside = {}
    if not args.no_variants:
        for title, variant in (
            ("ASHA vs FIFO", "bottletune-fifo"),
            ("TPE vs random", "bottletune-random"),
        ):
            pair = ("bottletune", variant)
            inside[title] = compare_curves(
                {name: runs[name]["curve"] for name in pair},
                REFERENCE,
                end=min(runs[name]["seconds"] for name in pair),
                samples=args.samples,
            )
    trial_choice = epoch_choice(runs["bottletune"]["histories"])
    report(args, machine, runs, comparison, inside, trial_choice, final_choice, started)
    return 0


def report(
    args: argparse.Namespace,
    machine: dict[str, Any],
    runs: dict[str, dict[str, Any]],
    comparison: dict[str, Any],
    inside: dict[str, dict[str, Any]],
    trial_choice: dict[str, Any],
    final_choice: dict[str, Any],
    started: float,
) -> None:
    """Prints the tables, writes the JSON and the plot (and the doc section unless --no-doc)."""
    settings_line = (
        f"VGG16 (random init) at {args.size} px, {args.classes} classes of "
        f"{args.per_class} training images, space `{args.space}`, {args.budget:.0f} s per "
        f"search, max {args.epochs} epochs (head {args.head_epochs}), ASHA grace "
        f"{args.grace_period} and reduction / Hyperband factor {args.reduction_factor}, seed "
        f"{SEED}, {args.cpus} trials of 1 CPU at once on the Ray sides, KerasTuner one trial "
        f"on {args.cpus} CPUs"
    )
    side_header = (
        "side",
        "wall s",
        "trials",
        "epochs",
        "best val acc",
        f"s to {comparison['target']:.3f}",
        "÷ bottletune",
        "final test acc",
    )
    sides = side_rows(runs, comparison)
    others = [side for side in comparison["sides"] if side != REFERENCE]
    time_header = ("s", *comparison["sides"], *(f"bottletune ÷ {side}" for side in others))
    times = equal_time_rows(comparison)
    inside_header = ("comparison", "run", "best val acc", "s to target", "÷ bottletune")
    inside_rows = [
        [title, name, cell(side["best_val_accuracy"]), cell(side["time_to_target"], 0)]
        + [cell(side["time_ratio"], 2, "×")]
        for title, result in inside.items()
        for name, side in result["sides"].items()
    ]
    gain = final_choice["best_test_accuracy"] - final_choice["last_test_accuracy"]
    choice_header = ("where", "last epoch", "best epoch", "best − last")
    choice_rows = [
        [
            f"{trial_choice['trials']} search trials, mean val acc",
            cell(trial_choice["mean_last"]),
            cell(trial_choice["mean_best"]),
            f"{trial_choice['mean_gain']:+.3f} ({trial_choice['trials_gaining']} trials gain)",
        ],
        [
            "search's best trial, val acc",
            cell(trial_choice["search_best_last"]),
            cell(trial_choice["search_best_any_epoch"]),
            f"{trial_choice['search_best_any_epoch'] - trial_choice['search_best_last']:+.3f}",
        ],
        [
            f"final model ({final_choice['epochs']} epochs, best {final_choice['best_epoch']}), "
            "test acc",
            cell(final_choice["last_test_accuracy"]),
            cell(final_choice["best_test_accuracy"]),
            f"{gain:+.3f}",
        ],
    ]
    better = "the best epoch" if gain > 0 else "the last epoch" if gain < 0 else "neither"
    verdict = (
        f"Target: {comparison['target']:.3f} validation accuracy "
        f"({'given' if args.target else 'the worst side’s best'}). Time ratios are side ÷ "
        "bottletune, accuracy ratios bottletune ÷ side: above 1, bottletune is ahead. "
        f"Final model on the held-out test split: {better} is better "
        f"({gain:+.3f} test accuracy for the best epoch's weights); best-epoch validation "
        "accuracy is chosen on the validation split, so it flatters itself there."
    )
    blocks = [
        (side_header, sides),
        (time_header, times),
        (inside_header, inside_rows),
        (choice_header, choice_rows),
    ]
    print()
    print(settings_line)
    for header, rows in blocks:
        if rows:
            print()
            print(text_table(header, rows))
    print()
    print(verdict)
    print()
    image = args.out.with_suffix(".png")
    plot(runs, image)
    results = {
        "benchmark": "peers",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": time.perf_counter() - started,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {**machine, "load_average_after": load_average()},
        "runs": runs,
        "comparison": comparison,
        "inside_bottletune": inside,
        "epoch_choice": {"trials": trial_choice, "final": final_choice},
        "plot": str(image),
    }
    write_results(args.out, results)
    if not args.no_doc:
        doc_image = IMG_DIR / "bench-peers.png"
        plot(runs, doc_image)
        tables = "\n\n".join(markdown_table(h, r) for h, r in blocks if r)
        update_doc_section(
            "peers",
            f"{settings_line}; {machine_line(machine)}.\n\n{tables}\n\n{verdict}\n\n"
            f"![peers](img/{doc_image.name})",
        )


if __name__ == "__main__":
    sys.exit(main())
