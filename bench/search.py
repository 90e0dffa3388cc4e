"""A whole search with the feature cache (``run_search``) against a naive Ray Tune search.

Both searches use the same data, search space, number of trials, seed, Optuna
sampler, ASHA settings, epochs, trial resources and concurrency, on a fresh
local Ray each:

cached
    ``tuning.search.run_search`` with an empty feature cache, so the wall time
    includes extracting every cut and augmented view the space needs.
naive
    A plain Ray Tune + Keras trainable (``naive_trainable`` below): each trial
    builds the full VGG16 with its head (and the augmentation layers when it
    augments), trains the head on a frozen backbone, then unfreezes the top
    ``unfreeze_blocks`` blocks and recompiles with SGD, as the recipe's script
    does; every epoch runs the whole network on the images. The decoded
    images are shared through the object store and decoding is timed in.

The wall-time ratio is naive seconds / cached seconds; the best validation
accuracy of each search is reported beside it (scope "last", as run_search).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    BACKBONE,
    SEED,
    WEIGHTS,
    add_output_flags,
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.search",
        description="A whole search with the cache (run_search) against a naive Ray Tune search.",
    )
    parser.add_argument("--size", type=positive_int, default=48, help="image side in px")
    parser.add_argument(
        "--per-class", type=positive_int, default=60, help="training images per class (2 classes)"
    )
    parser.add_argument("--samples", type=positive_int, default=6, help="trials per search")
    parser.add_argument("--epochs", type=positive_int, default=4, help="max_epochs (ASHA max_t)")
    parser.add_argument("--head-epochs", type=positive_int, default=1)
    parser.add_argument("--grace-period", type=positive_int, default=2)
    parser.add_argument("--views", type=positive_int, default=2, help="augmentation_views")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--space", default="default", help="search-space preset or YAML file")
    parser.add_argument("--cpus", type=positive_int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--concurrent", type=positive_int, default=2, help="max concurrent trials")
    add_output_flags(parser, "search")
    return parser.parse_args(argv)


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
            "reduction_factor": 2,
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
    keras.utils.set_random_seed(setup.seed)
    backbone = build_backbone(BACKBONE, WEIGHTS, setup.image_size, seed=setup.seed)
    keras.utils.set_random_seed(setup.seed + 1000)
    head = build_head(tuple(backbone.output.shape[1:]), num_classes, hparams)
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
                "epoch_seconds": time.perf_counter() - started,
            }
        )


def run_naive(config: Any, data_dir: Path, run_dir: Path, cpus: int) -> dict[str, Any]:
    """The naive search, with the same searcher, scheduler and resources as run_search."""
    from cluster import connect, prefer_loopback, shutdown

    prefer_loopback()
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from core.data import load_images, scan_dataset
    from core.hyperparameters import Hyperparameters
    from search_spaces import load_space, to_optuna
    from tuning.samplers import make_sampler

    features, schedule = config.features, config.schedule
    started = time.perf_counter()
    index = scan_dataset(data_dir, features.validation_fraction, config.seed)
    train = load_images(index.splits["train"], features.image_size)
    validation = load_images(index.splits["validation"], features.image_size)
    data = {
        "train": train.images,
        "train_labels": train.labels,
        "validation": validation.images,
        "validation_labels": validation.labels,
        "class_names": index.class_names,
    }
    setup = config.training_setup()
    info = connect(None, num_cpus=cpus, include_dashboard=False)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(naive_trainable, data=data, setup=setup),
            {"cpu": config.resources.cpus_per_trial},
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                search_alg=OptunaSearch(
                    space=to_optuna(load_space(config.searcher.space)),
                    metric=METRIC,
                    mode="max",
                    sampler=make_sampler(config.searcher.sampler, config.seed),
                ),
                scheduler=ASHAScheduler(
                    time_attr="training_iteration",
                    max_t=schedule.max_epochs,
                    grace_period=config.asha.grace_period,
                    reduction_factor=config.asha.reduction_factor,
                ),
                num_samples=schedule.num_samples,
                max_concurrent_trials=config.resources.max_concurrent_trials or None,
            ),
            run_config=tune.RunConfig(name="naive", storage_path=str(run_dir), verbose=0),
        )
        fit_started = time.perf_counter()
        grid = tuner.fit()
        fit_seconds = time.perf_counter() - fit_started
    finally:
        shutdown(info)
    seconds = time.perf_counter() - started
    trials = []
    for i in range(len(grid)):
        result = grid[i]
        metrics = result.metrics or {}
        trials.append(
            {
                "val_accuracy": metrics.get(METRIC),
                "epochs": metrics.get("training_iteration"),
                "hyperparameters": Hyperparameters.from_mapping(result.config).to_dict(),
                "error": str(result.error) if result.error else None,
            }
        )
    return {"seconds": seconds, "tuner_fit_seconds": fit_seconds, "trials": trials}


def summarize(side: str, seconds: float, trials: list[dict[str, Any]]) -> dict[str, Any]:
    scored = [t for t in trials if t["val_accuracy"] is not None]
    best = max(scored, key=lambda t: t["val_accuracy"]) if scored else None
    return {
        "side": side,
        "seconds": seconds,
        "trials": len(trials),
        "errors": sum(1 for t in trials if t.get("error")),
        "epochs_trained": sum(int(t["epochs"] or 0) for t in trials),
        "best_val_accuracy": best["val_accuracy"] if best else None,
        "best_hyperparameters": best["hyperparameters"] if best else None,
        "trial_list": trials,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from cluster import prefer_loopback

    prefer_loopback()  # before anything imports ray, as the CLI does
    from core.demo_data import make_demo_data
    from core.features import FeatureCache
    from tuning.search import run_search

    machine = machine_info(tensorflow=False)
    with tempfile.TemporaryDirectory(prefix="bottletune-bench-search-") as scratch:
        root = Path(scratch)
        make_demo_data(root / "data", classes=2, per_class=args.per_class, size=args.size)
        config = search_config(args, root / "cache")
        logger.info("cached search (run_search, empty cache)...")
        started = time.perf_counter()
        result = run_search(
            config, root / "data", root / "cached", num_cpus=args.cpus, progress=False
        )
        cached_seconds = time.perf_counter() - started
        cached = summarize(
            "cached",
            cached_seconds,
            [
                {
                    "val_accuracy": t.val_accuracy,
                    "epochs": t.epochs,
                    "hyperparameters": t.hyperparameters.to_dict(),
                    "error": t.error,
                }
                for t in result.trials
            ],
        )
        builds = FeatureCache(root / "cache").builds()
        # Every entry of one forward pass records that pass's time: count each pass once.
        passes = {(b["augmentation"], b["view"]): b["seconds"] for b in builds}
        cached["extraction_seconds"] = sum(passes.values())
        cached["extraction_passes"] = len(passes)
        cached["cache_entries_built"] = len(builds)
        # Tuner.fit's seconds, as results.json holds them.
        cached["tuner_fit_seconds"] = result.summary.seconds
        logger.info("naive search (full VGG16 per epoch)...")
        naive_run = run_naive(config, root / "data", root / "naive", args.cpus)
        naive = summarize("naive", naive_run["seconds"], naive_run["trials"])
        naive["tuner_fit_seconds"] = naive_run["tuner_fit_seconds"]
    same = sorted(map(str, (t["hyperparameters"] for t in cached["trial_list"]))) == sorted(
        map(str, (t["hyperparameters"] for t in naive["trial_list"]))
    )
    ratio = naive["seconds"] / cached["seconds"]
    header = (
        "search",
        "wall s",
        "of which Tuner.fit s",
        "trials",
        "epochs trained",
        "best val accuracy",
    )
    cells = [
        (
            s["side"],
            f"{s['seconds']:.1f}",
            f"{s['tuner_fit_seconds']:.1f}",
            f"{s['trials']}" + (f" ({s['errors']} errors)" if s["errors"] else ""),
            str(s["epochs_trained"]),
            f"{s['best_val_accuracy']:.3f}" if s["best_val_accuracy"] is not None else "-",
        )
        for s in (cached, naive)
    ]
    settings_line = (
        f"VGG16 (random init) at {args.size} px, {2 * args.per_class} training images, space "
        f"`{args.space}`, {args.samples} trials, max {args.epochs} epochs "
        f"(head {args.head_epochs}, ASHA grace {args.grace_period}), TPE seed {SEED}, "
        f"{args.concurrent} concurrent trials "
        f"of 1 CPU, {args.views} views per strength, {args.dtype}"
    )
    verdict = (
        f"Wall-time ratio naive / cached: **{ratio:.2f}×** (cached time includes "
        f"{cached['extraction_seconds']:.1f} s building {cached['cache_entries_built']} cache "
        f"entries in {cached['extraction_passes']} forward passes). Sampled configurations "
        f"identical on both sides: {'yes' if same else 'no'} "
        "(ASHA's stops depend on each side's results)."
    )
    print()
    print(settings_line)
    print(text_table(header, cells))
    print(verdict.replace("**", ""))
    print()
    results = {
        "benchmark": "search",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {**machine, "load_average_after": load_average()},
        "cached": cached,
        "naive": naive,
        "ratio": ratio,
        "same_configurations": same,
    }
    write_results(args.out, results)
    if not args.no_doc:
        update_doc_section(
            "search",
            f"{settings_line}; {machine_line(machine)}.\n\n"
            + markdown_table(header, cells)
            + f"\n\n{verdict}",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
