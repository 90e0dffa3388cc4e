"""Whole searches, side by side: the feature cache against a naive Ray Tune search.

Three searches of the same data, search space, number of trials, seed, Optuna
TPE sampler, ASHA settings, epochs, trial resources and concurrency, one after
another, each on a fresh local Ray:

cached
    ``tuning.search.run_search`` with an empty feature cache and ASHA counting
    epochs. Its clock starts before ``run_search`` is called, so it includes
    Ray's start, the cache plan, extracting the plain features (while the
    first trial's process starts) and the augmented views (built while
    trials run).
naive
    A plain Ray Tune + Keras trainable (``naive_trainable``): each trial
    builds the full VGG16 with its head (and the augmentation layers when it
    augments), trains the head on a frozen backbone, then unfreezes the top
    ``unfreeze_blocks`` blocks and recompiles with SGD, as the recipe's script
    does; every epoch runs the whole network on the images. Its clock starts
    before the images are decoded. Its first trial is ``cached``'s (the plain
    one of ``first_trial: plain``, given to ``OptunaSearch`` as
    ``points_to_evaluate``), so both sample the same configurations until
    their results differ.
cached-cost
    ``run_search`` again with ``asha_time_attr: cost`` (ASHA's rungs at equal
    compute), on the cache the ``cached`` search left warm. Its clock starts
    the ``cached`` search's extraction seconds early (as recorded by the
    cache: the plain pass and every view pass, added in full although in
    ``cached`` the views were built while its trials ran), so that both count
    extraction.

Every epoch of every trial is read back from Ray Tune's own ``result.json``;
its time is the report's ``timestamp`` (whole seconds, taken at the middle of
its second, so +-0.5 s) less the side's start. From these curves:

- time to target: when a side first reports a validation accuracy of at least
  the naive search's best (any trial, any epoch); the ratio naive / cached is
  meant to be at least 3x;
- best validation accuracy at equal wall time: each side's best so far at a
  few common times, the last one the shortest side's end;
- ASHA in cost against epochs: time to target and wall time of ``cached`` over
  ``cached-cost`` (above 1: cost is faster);
- the first epoch (issue 9, item 3): the ``cached`` search's first reported
  epoch, counted from its start, over one uncached epoch of the same backbone
  on the same images (the naive search's first trial's first epoch, training
  and validation); meant to be at most 1.5x.

At the defaults the three searches took 16 minutes on 2 CPU cores
(2026-12-02), most of it the naive search; ``--size 32 --classes 2
--per-class 10 --samples 3 --epochs 2 --head-epochs 1 --grace-period 1 --views
1`` is a smoke run (about 5 minutes on a shared 2-core machine, where Ray's and
each trial's start-up dominate).
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
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from bench.common import (
    BACKBONE,
    RESULTS_DIR,
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
from bench.peers import accuracy_value, best_at, compare_curves, ratio, reported_epochs

logger = logging.getLogger(__name__)

METRIC = "val_accuracy"
CACHED, NAIVE, COST = "cached", "naive", "cached-cost"
TIME_TO_TARGET_GOAL = 3.0
"""Naive time to target / cached time to target should be at least this."""
FIRST_EPOCH_GOAL = 1.5
"""The cached search's first epoch should come at most this many uncached epochs after its start."""
TIMESTAMP_MIDPOINT = 0.5
"""Ray Tune's ``timestamp`` is whole seconds (truncated): the report came within the next one."""

Curve = list[tuple[float, float]]
"""(seconds since the side's start, validation accuracy) of every epoch any trial reported."""


# Arguments


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.search",
        description="Whole searches: cached (ASHA in epochs and in cost) against naive Ray Tune.",
    )
    # 128 px: at 96 px an uncached epoch is cheap enough (about 10 s here) that the
    # cached search's fixed start (Ray, the plan, the builder) weighs against it
    # (docs/benchmarks.md, section 4, runs 1-3).
    parser.add_argument("--size", type=positive_int, default=128, help="image side in px")
    parser.add_argument("--classes", type=positive_int, default=3, help="classes of shapes")
    parser.add_argument(
        "--per-class",
        type=positive_int,
        default=70,
        help="training images per class (validation: half as many)",
    )
    parser.add_argument("--samples", type=positive_int, default=16, help="trials per search")
    parser.add_argument("--epochs", type=positive_int, default=6, help="max_epochs (ASHA max_t)")
    parser.add_argument("--head-epochs", type=positive_int, default=2, help="phase-1 epochs")
    parser.add_argument("--grace-period", type=positive_int, default=3, help="ASHA's grace")
    parser.add_argument("--reduction-factor", type=positive_int, default=2, help="ASHA's factor")
    parser.add_argument("--views", type=positive_int, default=2, help="augmentation_views")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--space", default="default", help="search-space preset or YAML file")
    parser.add_argument("--cpus", type=positive_int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--concurrent", type=positive_int, default=2, help="max concurrent trials")
    parser.add_argument(
        "--target",
        type=accuracy_value,
        help="validation accuracy to reach (default: the naive search's best)",
    )
    parser.add_argument(
        "--time-points", type=positive_int, default=4, help="times of the equal-time table"
    )
    add_output_flags(parser, "search")
    args = parser.parse_args(argv)
    if args.classes < 2:
        parser.error(f"--classes {args.classes}: must be at least 2")
    if args.per_class < 4:
        parser.error(f"--per-class {args.per_class}: must be at least 4")
    if args.grace_period > args.epochs:
        parser.error(f"--grace-period {args.grace_period}: must be at most --epochs {args.epochs}")
    if args.reduction_factor < 2:
        parser.error(f"--reduction-factor {args.reduction_factor}: must be at least 2")
    return args


REPRODUCED_FLAGS = (
    "size",
    "classes",
    "per_class",
    "samples",
    "epochs",
    "head_epochs",
    "grace_period",
    "reduction_factor",
    "views",
    "dtype",
    "space",
    "cpus",
    "concurrent",
    "target",
    "time_points",
)
"""Every flag that changes what is measured, in the order the command prints them."""


def command_line(args: argparse.Namespace) -> str:
    """The command that reruns this benchmark with every setting spelled out."""
    return common.command_line("bench.search", args, REPRODUCED_FLAGS, RESULTS_DIR / "search.json")


# Curves (pure: tests/unit/test_bench_search.py checks them on synthetic rows)


def report_seconds(row: Mapping[str, Any], started: float, offset: float = 0.0) -> float:
    """When one Ray Tune report came, in seconds since ``started`` (a ``time.time()``).

    Args:
        row: One line of a trial's ``result.json``.
        started: The side's start.
        offset: Seconds added to the side's clock (a warm cache's extraction).
    """
    return max(0.0, float(row["timestamp"]) + TIMESTAMP_MIDPOINT - started) + offset


def side_curve(
    trials: Sequence[Sequence[Mapping[str, Any]]], started: float, offset: float = 0.0
) -> Curve:
    """Every finite validation accuracy reported by these trials (their rows), in time order."""
    return sorted(
        (report_seconds(row, started, offset), float(row[METRIC]))
        for rows in trials
        for row in rows
        if row.get(METRIC) is not None and math.isfinite(float(row[METRIC]))
    )


def first_epochs(
    trials: Sequence[Sequence[Mapping[str, Any]]], started: float, offset: float = 0.0
) -> list[dict[str, Any]]:
    """Each trial's first report: when it came and what the epoch took, earliest trial first.

    A trial's first report is its ``training_iteration`` 1 (a trial without one
    is left out). ``time_total_s`` is Ray's time from the trainable's start to
    that report; ``epoch_seconds``, ``startup_total_s`` (what the recipe's
    trial spent before its first epoch) and ``startup_fetch_s`` (of that, the
    wait for its features, the plain pass's end on a cold cache) are None
    where the trainable does not report them.
    """
    firsts = []
    for rows in trials:
        first = [row for row in rows if row.get("training_iteration") == 1]
        if not first:
            continue
        row = first[0]
        firsts.append(
            {
                "seconds": report_seconds(row, started, offset),
                "time_total_s": row.get("time_total_s"),
                "epoch_seconds": row.get("epoch_seconds"),
                "startup_total_s": row.get("startup_total_s"),
                "startup_fetch_s": row.get("startup_fetch_s"),
            }
        )
    return sorted(firsts, key=lambda item: (item["seconds"], item["time_total_s"] or 0.0))


def format_ratio(value: float | None, digits: int = 2) -> str:
    """A ratio for the tables: ``3.41×``, or ``-`` when it could not be measured."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}×"


def format_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def verdict(value: float | None, goal: float, *, at_least: bool) -> str:
    """``met`` or ``not met`` against a goal (at least or at most it), or ``not measured``."""
    if value is None or not math.isfinite(value):
        return "not measured"
    met = value >= goal if at_least else value <= goal
    return "met" if met else "not met"


def configurations_in_common(
    first: Sequence[Mapping[str, Any]], second: Sequence[Mapping[str, Any]]
) -> int:
    """How many sampled configurations two searches share (as a multiset intersection)."""

    def counted(configs: Sequence[Mapping[str, Any]]) -> Counter[str]:
        return Counter(json.dumps(dict(config), sort_keys=True) for config in configs)

    return sum((counted(first) & counted(second)).values())


# The sides


@dataclass
class Side:
    """One search as measured.

    Attributes:
        name: ``cached``, ``naive`` or ``cached-cost``.
        asha_time_attr: What ASHA counted time in (epochs or cost).
        cache: "cold" (extraction timed in), "warm" (extraction added as the
            clock offset) or "none" (the naive search).
        seconds: Wall time of the search, extraction included (with the offset).
        clock_offset_s: Seconds the side's clock started early.
        trials: Per trial: id, last-epoch validation accuracy, epochs,
            hyperparameters, error.
        curve: Every epoch reported (see ``side_curve``).
        first_epochs: Each trial's first report (see ``first_epochs``).
        extraction: For a cold cache: what the cache recorded building.
    """

    name: str
    asha_time_attr: str
    cache: str
    seconds: float
    clock_offset_s: float
    trials: list[dict[str, Any]]
    curve: Curve
    first_epochs: list[dict[str, Any]]
    extraction: dict[str, Any] = field(default_factory=dict)

    @property
    def best_val_accuracy(self) -> float | None:
        """The best validation accuracy any trial reported at any epoch."""
        return max((value for _, value in self.curve), default=None)

    @property
    def best_last_epoch(self) -> float | None:
        """The best trial's validation accuracy at its last epoch, as run_search ranks trials."""
        return max(
            (trial["val_accuracy"] for trial in self.trials if trial["val_accuracy"] is not None),
            default=None,
        )

    @property
    def first_report_s(self) -> float | None:
        return self.curve[0][0] if self.curve else None

    @property
    def before_first_trial_s(self) -> float | None:
        """Seconds of this run (its clock offset left out) before its first trial's trainable
        started: the first report's time less Ray's ``time_total_s`` of that trial."""
        if not self.first_epochs or self.first_epochs[0]["time_total_s"] is None:
            return None
        first = self.first_epochs[0]
        return float(first["seconds"] - first["time_total_s"] - self.clock_offset_s)

    @property
    def epochs_trained(self) -> int:
        return sum(int(trial["epochs"] or 0) for trial in self.trials)

    @property
    def errors(self) -> int:
        return sum(1 for trial in self.trials if trial["error"])

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "best_val_accuracy": self.best_val_accuracy,
            "best_last_epoch": self.best_last_epoch,
            "first_report_s": self.first_report_s,
            "before_first_trial_s": self.before_first_trial_s,
            "epochs_trained": self.epochs_trained,
            "errors": self.errors,
        }


def search_config(args: argparse.Namespace, cache_dir: Path) -> Any:
    from tuning.config import load_config

    return load_config(
        overrides={
            "backbone": BACKBONE,
            "weights": WEIGHTS,
            "image_size": args.size,
            "num_samples": args.samples,
            "max_epochs": args.epochs,
            "head_epochs": args.head_epochs,
            "grace_period": args.grace_period,
            "reduction_factor": args.reduction_factor,
            "asha_time_attr": "epochs",
            "sampler": "tpe",
            "seed": SEED,
            "max_concurrent_trials": args.concurrent,
            "cpus_per_trial": 1,
            "cache_dir": str(cache_dir),
            "space": args.space,
            "include_dashboard": False,
            "augmentation_views": args.views,
            "feature_dtype": args.dtype,
        }
    )


def run_cached(
    name: str, config: Any, data_dir: Path, run_dir: Path, cpus: int, *, offset: float = 0.0
) -> Side:
    """One ``run_search``, timed from before the call (``offset`` seconds early)."""
    from tuning.search import run_search

    logger.info("%s search (run_search, asha_time_attr=%s)...", name, config.asha.asha_time_attr)
    started_wall, started = time.time(), time.perf_counter()
    result = run_search(config, data_dir, run_dir, num_cpus=cpus, progress=False)
    seconds = time.perf_counter() - started + offset
    rows = [reported_epochs(Path(trial.path)) for trial in result.trials]
    return Side(
        name=name,
        asha_time_attr=config.asha.asha_time_attr,
        cache="warm" if offset else "cold",
        seconds=seconds,
        clock_offset_s=offset,
        trials=[
            {
                "trial": trial.trial_id,
                "val_accuracy": trial.val_accuracy,
                "epochs": trial.epochs,
                "hyperparameters": trial.hyperparameters.to_dict(),
                "error": trial.error,
            }
            for trial in result.trials
        ],
        curve=side_curve(rows, started_wall, offset),
        first_epochs=first_epochs(rows, started_wall, offset),
    )


def naive_trainable(config: dict[str, Any], *, data: dict[str, Any], setup: Any) -> None:
    """A plain Keras trial: the full VGG16 on the images every epoch, phase 1 then phase 2."""
    from ray import tune

    from core.runtime import configure_tensorflow

    configure_tensorflow(1)
    import keras

    from core.backbones import apply_layers, build_backbone, get_backbone, split_layers
    from core.hyperparameters import Hyperparameters
    from core.layers import BackbonePreprocess, build_augmentation
    from core.model import build_head, freeze, loss_for, unfreeze
    from core.training import array_batches, run_batches

    hparams = Hyperparameters.from_mapping(config)
    num_classes = len(data["class_names"])
    backbone = build_backbone(BACKBONE, WEIGHTS, setup.image_size, seed=setup.seed)
    # The head's init as RecipeTrainer's (on random-init features it decides
    # whether a head learns in a few epochs), then training's own seed.
    keras.utils.set_random_seed(setup.seed)
    head = build_head(tuple(backbone.output.shape[1:]), num_classes, hparams)
    keras.utils.set_random_seed(setup.seed + 1000)
    image = keras.Input(shape=(setup.image_size, setup.image_size, 3))
    augment = build_augmentation(hparams.augmentation, seed=setup.seed)
    x = augment(image) if augment is not None else image
    _, layers = split_layers(backbone, "input")
    model = keras.Model(image, head(apply_layers(layers, BackbonePreprocess(BACKBONE)(x))))
    freeze(layers)
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=hparams.head_learning_rate),
        loss=loss_for(num_classes),
        metrics=["accuracy"],
    )

    def target(labels: np.ndarray) -> np.ndarray:
        return labels.astype("float32").reshape(-1, 1) if num_classes == 2 else labels

    train_y, validation_y = target(data["train_labels"]), target(data["validation_labels"])
    phase_one = setup.phase_one_epochs if hparams.unfreeze_blocks else setup.epochs
    for epoch in range(setup.epochs):
        if epoch == phase_one:
            cut = get_backbone(BACKBONE).cut_for(hparams.unfreeze_blocks)
            prefix, suffix = split_layers(backbone, cut)
            freeze(prefix)
            unfreeze(suffix)
            model.compile(
                optimizer=keras.optimizers.SGD(
                    learning_rate=hparams.finetune_learning_rate, momentum=hparams.momentum
                ),
                loss=loss_for(num_classes),
                metrics=["accuracy"],
            )
        started = time.perf_counter()
        batches = array_batches(
            data["train"], train_y, hparams.batch_size, shuffle=True, seed=setup.seed + epoch
        )
        fit = run_batches(model, batches, train=True)
        validation = run_batches(
            model,
            array_batches(
                data["validation"], validation_y, hparams.batch_size, shuffle=False, seed=0
            ),
            train=False,
        )
        tune.report(
            {
                "loss": fit["loss"],
                "val_loss": validation["loss"],
                METRIC: validation["accuracy"],
                "phase": 1 if epoch < phase_one else 2,
                # Training and validation of this epoch: one uncached epoch.
                "epoch_seconds": time.perf_counter() - started,
            }
        )


def decode_images(config: Any, data_dir: Path) -> dict[str, Any]:
    """The training and validation images, decoded once and shared with every naive trial."""
    from core.data import load_images, scan_dataset

    index = scan_dataset(data_dir, config.features.validation_fraction, config.seed)
    train = load_images(index.splits["train"], config.features.image_size)
    validation = load_images(index.splits["validation"], config.features.image_size)
    return {
        "train": train.images,
        "train_labels": train.labels,
        "validation": validation.images,
        "validation_labels": validation.labels,
        "class_names": index.class_names,
    }


def run_naive(config: Any, data_dir: Path, run_dir: Path, cpus: int) -> Side:
    """The naive search, with the same searcher, scheduler and resources as run_search."""
    from cluster import connect, prefer_loopback, shutdown

    prefer_loopback()
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from core.hyperparameters import Hyperparameters
    from search_spaces import load_space, to_optuna
    from tuning.samplers import make_sampler

    logger.info("naive search (full VGG16 on the images every epoch)...")
    schedule, asha = config.schedule, config.asha
    space = load_space(config.searcher.space)
    # The same first trial as run_search's (first_trial: plain), so that both sides
    # sample the same configurations until their results differ.
    plain = space.plain_values() if config.searcher.first_trial == "plain" else None
    started_wall, started = time.time(), time.perf_counter()
    data = decode_images(config, data_dir)
    info = connect(None, num_cpus=cpus, include_dashboard=False)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(naive_trainable, data=data, setup=config.training_setup()),
            {"cpu": config.resources.cpus_per_trial},
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                search_alg=OptunaSearch(
                    space=to_optuna(space),
                    metric=METRIC,
                    mode="max",
                    sampler=make_sampler(config.searcher.sampler, config.seed),
                    points_to_evaluate=[dict(plain)] if plain else None,
                ),
                scheduler=ASHAScheduler(
                    time_attr="training_iteration",
                    max_t=schedule.max_epochs,
                    grace_period=asha.grace_period,
                    reduction_factor=asha.reduction_factor,
                ),
                num_samples=schedule.num_samples,
                max_concurrent_trials=config.resources.max_concurrent_trials or None,
            ),
            run_config=tune.RunConfig(name="naive", storage_path=str(run_dir), verbose=0),
        )
        grid = tuner.fit()
    finally:
        shutdown(info)
    seconds = time.perf_counter() - started
    results = [grid[i] for i in range(len(grid))]
    rows = [reported_epochs(Path(result.path)) for result in results]
    return Side(
        name=NAIVE,
        asha_time_attr="epochs",
        cache="none",
        seconds=seconds,
        clock_offset_s=0.0,
        trials=[
            {
                "trial": Path(result.path).name,
                "val_accuracy": (result.metrics or {}).get(METRIC),
                "epochs": (result.metrics or {}).get("training_iteration"),
                "hyperparameters": Hyperparameters.from_mapping(result.config or {}).to_dict(),
                "error": str(result.error) if result.error else None,
            }
            for result in results
        ],
        curve=side_curve(rows, started_wall),
        first_epochs=first_epochs(rows, started_wall),
    )


def run_sides(args: argparse.Namespace, root: Path) -> dict[str, Side]:
    """The three searches on one synthetic data set, in the order cached, naive, cached-cost."""
    from core.demo_data import make_demo_data

    data_dir = root / "data"
    make_demo_data(data_dir, classes=args.classes, per_class=args.per_class, size=args.size)
    config = search_config(args, root / "cache")
    cached = run_cached(CACHED, config, data_dir, root / CACHED, args.cpus)
    cached.extraction = extraction_record(root / "cache")
    naive = run_naive(config, data_dir, root / NAIVE, args.cpus)
    cost = run_cached(
        COST,
        config.replace(asha_time_attr="cost"),
        data_dir,
        root / COST,
        args.cpus,
        offset=cached.extraction["seconds"],
    )
    return {side.name: side for side in (cached, naive, cost)}


# The comparison


def compare_sides(
    sides: Mapping[str, Side], *, target: float | None = None, time_points: int = 4
) -> dict[str, Any]:
    """Time to target, best at equal wall time, and the ratios the issue asks for.

    Args:
        sides: ``cached``, ``naive`` and ``cached-cost``.
        target: The accuracy to reach (None: the naive search's best).
        time_points: Times of the equal-time comparison, evenly spaced up to
            the shortest side's wall time.

    Returns:
        ``compare_curves``'s result (reference ``cached``) with ``ratios``:
        naive / cached time to target, cached / cached-cost time to target and
        wall time; and ``first_epoch``: the cached search's first report, one
        uncached epoch, their ratio.
    """
    naive_best = sides[NAIVE].best_val_accuracy
    goal = target if target is not None else naive_best
    end = min(side.seconds for side in sides.values())
    comparison = compare_curves(
        {name: side.curve for name, side in sides.items()},
        CACHED,
        end=end,
        samples=time_points,
        target=goal,
    )
    reached = {name: comparison["sides"][name]["time_to_target"] for name in sides}
    comparison["target_source"] = "--target" if target is not None else "naive search's best"
    comparison["ratios"] = {
        "naive_over_cached_time_to_target": ratio(reached[NAIVE], reached[CACHED]),
        "naive_over_cached_wall": ratio(sides[NAIVE].seconds, sides[CACHED].seconds),
        "epochs_over_cost_time_to_target": ratio(reached[CACHED], reached[COST]),
        "epochs_over_cost_wall": ratio(sides[CACHED].seconds, sides[COST].seconds),
    }
    comparison["first_epoch"] = first_epoch_comparison(sides[CACHED], sides[NAIVE])
    # What the cold cache held the first trial back by, against the warm one: the
    # part of the plain pass the first trial's own start-up did not hide, plus
    # the noise between two runs.
    cold, warm = sides[CACHED].before_first_trial_s, sides[COST].before_first_trial_s
    comparison["cold_cache_delay_s"] = (
        cold - warm if cold is not None and warm is not None else None
    )
    comparison["configurations_in_common"] = configurations_in_common(
        [trial["hyperparameters"] for trial in sides[CACHED].trials],
        [trial["hyperparameters"] for trial in sides[NAIVE].trials],
    )
    return comparison


def first_epoch_comparison(cached: Side, naive: Side) -> dict[str, Any]:
    """The cached search's first epoch (from its start) against one uncached epoch."""
    uncached = [first["epoch_seconds"] for first in naive.first_epochs if first["epoch_seconds"]]
    epoch = uncached[0] if uncached else None
    trial = cached.first_epochs[0] if cached.first_epochs else {}
    return {
        "cached_first_report_s": cached.first_report_s,
        # Where the cached search's wait went: before its first trial's trainable
        # started (Ray, the plan, Tune, the trial's process; the plain pass runs
        # meanwhile), then in that trial (start-up: importing TensorFlow, then
        # waiting for the plain pass to end; then the epoch).
        "cached_before_first_trial_s": cached.before_first_trial_s,
        "cached_first_trial_s": trial.get("time_total_s"),
        "cached_first_trial_startup_s": trial.get("startup_total_s"),
        "cached_first_trial_fetch_s": trial.get("startup_fetch_s"),
        "cached_first_epoch_s": trial.get("epoch_seconds"),
        "uncached_epoch_s": epoch,
        "uncached_epoch_median_s": statistics.median(uncached) if uncached else None,
        "naive_first_report_s": naive.first_report_s,
        "ratio": ratio(cached.first_report_s, epoch),
        "goal": FIRST_EPOCH_GOAL,
    }


# Rendering


SIDE_HEADER = (
    "search",
    "ASHA time",
    "cache",
    "wall s (with extraction)",
    "trials",
    "epochs trained",
    "first epoch at s",
    "time to target s",
    "best val accuracy (any epoch)",
    "best trial (last epoch)",
)


def side_rows(sides: Mapping[str, Side], comparison: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for name, side in sides.items():
        cache = side.cache
        reached = comparison["sides"][name]["time_to_target"]
        time_to_target = format_seconds(reached) if reached is not None else None
        if side.clock_offset_s:
            cache += f" (+{side.clock_offset_s:.1f} s extraction)"
        rows.append(
            [
                name,
                side.asha_time_attr,
                cache,
                format_seconds(side.seconds),
                f"{len(side.trials)}" + (f" ({side.errors} errors)" if side.errors else ""),
                str(side.epochs_trained),
                format_seconds(side.first_report_s),
                time_to_target if time_to_target is not None else "not reached",
                format_accuracy(side.best_val_accuracy),
                format_accuracy(side.best_last_epoch),
            ]
        )
    return rows


def equal_time_rows(comparison: Mapping[str, Any], names: Sequence[str]) -> list[list[str]]:
    return [
        [f"{point['seconds']:.0f}", *(format_accuracy(point["best"][name]) for name in names)]
        for point in comparison["points"]
    ]


def summary_lines(
    sides: Mapping[str, Side], comparison: Mapping[str, Any], markdown: bool
) -> list[str]:
    """The ratios and what they are measured against, one sentence each."""
    bold = "**" if markdown else ""
    ratios, first = comparison["ratios"], comparison["first_epoch"]
    speedup = ratios["naive_over_cached_time_to_target"]
    extraction = sides[CACHED].extraction
    reached = {name: comparison["sides"][name]["time_to_target"] for name in sides}
    missed = [name for name, seconds in reached.items() if seconds is None]
    end = comparison["end"]
    lines = [
        f"Target: validation accuracy {comparison['target']:.3f} ({comparison['target_source']})"
        + (f"; not reached by {', '.join(missed)}" if missed else "")
        + ".",
        f"Time to target, naive / cached: {bold}{format_ratio(speedup)}{bold} "
        f"(goal ≥ {TIME_TO_TARGET_GOAL:g}×: "
        f"{verdict(speedup, TIME_TO_TARGET_GOAL, at_least=True)}); wall time of the whole "
        f"search, naive / cached: {format_ratio(ratios['naive_over_cached_wall'])}.",
        "ASHA in cost against epochs (cached / cached-cost, above 1: cost is faster): time to "
        f"target {format_ratio(ratios['epochs_over_cost_time_to_target'])}, wall time "
        f"{format_ratio(ratios['epochs_over_cost_wall'])}; best at {end:.0f} s: "
        f"epochs {format_accuracy(best_at(sides[CACHED].curve, end))}, "
        f"cost {format_accuracy(best_at(sides[COST].curve, end))}.",
        f"First epoch (item 3): the cached search reported its first epoch "
        f"{format_seconds(first['cached_first_report_s'])} s after it started; one uncached "
        f"epoch (the naive search's first trial's first epoch, training and validation) took "
        f"{format_seconds(first['uncached_epoch_s'])} s (median of the naive trials' first "
        f"epochs {format_seconds(first['uncached_epoch_median_s'])} s): "
        f"{bold}{format_ratio(first['ratio'])}{bold} (goal ≤ {FIRST_EPOCH_GOAL:g}×: "
        f"{verdict(first['ratio'], FIRST_EPOCH_GOAL, at_least=False)}). Of the cached "
        f"search's wait, {format_seconds(first['cached_before_first_trial_s'])} s came before "
        "its first trial's trainable started (Ray's start, the cache plan, Tune's and the "
        "trial process's start, while the plain pass began) and "
        f"{format_seconds(first['cached_first_trial_s'])} s in that trial (start-up "
        f"{format_seconds(first['cached_first_trial_startup_s'])} s, of it "
        f"{format_seconds(first.get('cached_first_trial_fetch_s'))} s waiting for the plain "
        f"features; its epoch {format_seconds(first['cached_first_epoch_s'])} s). The naive "
        f"search reported its first epoch at {format_seconds(first['naive_first_report_s'])} s.",
        f"Extraction in the cached search: {extraction['seconds']:.1f} s as the cache recorded "
        f"it (plain pass {extraction['plain_pass_seconds']:.1f} s while the first trial "
        f"started, {extraction['view_passes']} view passes "
        f"{extraction['view_passes_seconds']:.1f} s while trials ran; "
        f"{extraction['entries_built']} entries). cached-cost ran on that warm cache, its "
        "clock started that many seconds early. Its first trial began "
        f"{format_seconds(comparison['cold_cache_delay_s'])} s sooner into its own run than "
        "cached's did: what the cold cache held the first trial back by, the recorded plain "
        "pass less what the first trial's own start-up hid of it, plus noise.",
        "Times are Ray Tune's result.json timestamps (whole seconds, +-0.5 s) less each "
        "search's start; sampled configurations shared by cached and naive: "
        f"{comparison['configurations_in_common']} of {len(sides[CACHED].trials)} (ASHA's stops "
        "and TPE's later picks depend on each side's results).",
    ]
    return lines


def settings_line(args: argparse.Namespace) -> str:
    return (
        f"VGG16 (random init) at {args.size} px, {args.classes} classes × {args.per_class} "
        f"training images ({args.classes * max(2, args.per_class // 2)} validation), space "
        f"`{args.space}`, {args.samples} trials, max {args.epochs} epochs (head "
        f"{args.head_epochs}, ASHA grace {args.grace_period}, reduction factor "
        f"{args.reduction_factor}), TPE seed {SEED}, {args.concurrent} concurrent trials of 1 CPU "
        f"on {args.cpus}, {args.views} views per strength, {args.dtype}"
    )


def render(
    args: argparse.Namespace,
    sides: Mapping[str, Side],
    comparison: Mapping[str, Any],
    machine: Mapping[str, Any],
    *,
    markdown: bool,
) -> str:
    """The report: settings, the side-by-side table, equal-time bests, ratios, the command."""
    table = markdown_table if markdown else text_table
    names = list(sides)
    equal_header = ("at s", *(f"best {name}" for name in names))
    lines = summary_lines(sides, comparison, markdown)
    command = command_line(args)
    parts = [
        f"{settings_line(args)}; {machine_line(dict(machine))}.",
        table(SIDE_HEADER, side_rows(sides, comparison)),
        "Best validation accuracy so far at equal wall time (the last row is the shortest "
        "search's end):",
        table(equal_header, equal_time_rows(comparison, names)),
        "\n".join(f"- {line}" if markdown else line for line in lines),
        f"Reproduce: `{command}`" if markdown else f"Reproduce: {command}",
    ]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from cluster import prefer_loopback

    prefer_loopback()  # before anything imports ray, as the CLI does
    machine = machine_info(tensorflow=False)
    with tempfile.TemporaryDirectory(prefix="bottletune-bench-search-") as scratch:
        sides = run_sides(args, Path(scratch))
    comparison = compare_sides(sides, target=args.target, time_points=args.time_points)
    print()
    print(render(args, sides, comparison, machine, markdown=False).replace("`", ""))
    print()
    write_results(
        args.out,
        {
            "benchmark": "search",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command_line(args),
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "machine": {**machine, "load_average_after": load_average()},
            "sides": {name: side.to_dict() for name, side in sides.items()},
            "comparison": comparison,
        },
    )
    if not args.no_doc:
        update_doc_section("search", render(args, sides, comparison, machine, markdown=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
