"""The ``bottletune`` command: a thin layer over functions a user can also call.

Heavy libraries (TensorFlow, Ray) are imported inside the commands that need
them, so ``--help`` and config validation stay fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from cli.cache_commands import add_cache_parser, run_cache_command

logger = logging.getLogger("bottletune")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bottletune",
        description="Tune the VGG16 bottleneck-features + fine-tuning recipe with Ray Tune, "
        "Optuna and ASHA.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tune = commands.add_parser("tune", help="run a search")
    tune.add_argument("--data", help="dataset directory (with --resume: default, the run's)")
    tune.add_argument("--out", help="new run directory for results")
    tune.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted search: finished trials are kept, unfinished ones "
        "resume from their last checkpoint",
    )
    tune.add_argument(
        "--force",
        action="store_true",
        help="with --resume: go on even if the data, space or config differ from the run's",
    )
    tune.add_argument(
        "--warm-start",
        metavar="PATH",
        help="seed the searcher with an earlier search: its run directory or a best.json; "
        "the first trial evaluates its best configuration",
    )
    tune.add_argument("--config", help="YAML config file or preset name from configs/")
    tune.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable)",
    )
    tune.add_argument(
        "--engine",
        metavar="ENGINE",
        help="shortcut for --set engine=ENGINE: ray (default; clusters, ASHA, resume) or "
        "keras-tuner (KerasTuner's oracles, --set kt_oracle=hyperband|bayesian|random, "
        "on this machine, one trial at a time)",
    )
    tune.add_argument(
        "--address",
        help="join a running cluster: auto, HOST:PORT or "
        "ray://HOST:PORT (default: start a local single-node Ray)",
    )
    tune.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    tune.add_argument("--num-gpus", type=int, help="GPUs the local Ray announces")
    tune.add_argument("--quiet", action="store_true", help="no progress bar or table")

    check = commands.add_parser("check-config", help="validate a config and print it resolved")
    check.add_argument("--config", help="YAML config file or preset name")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    export = commands.add_parser("export", help="write the best trial's config as JSON")
    export.add_argument("run_dir", help="run directory of a finished search")
    export.add_argument("--out", required=True, help="JSON file to write")
    export.add_argument("--force", action="store_true", help="overwrite --out")

    train = commands.add_parser("train", help="train the final model from an exported config")
    train.add_argument("--config", required=True, help="JSON written by bottletune export")
    train.add_argument("--data", required=True, help="dataset directory")
    train.add_argument("--out", required=True, help="output directory")
    train.add_argument("--cache-dir", help="feature cache (default: the search's)")
    train.add_argument("--force", action="store_true", help="overwrite an existing model")
    train.add_argument(
        "--epoch-weights",
        choices=("best", "last"),
        default="best",
        help="save the best validation epoch's weights (default) or the last epoch's",
    )

    evaluate = commands.add_parser("evaluate", help="accuracy of a saved model on a split")
    evaluate.add_argument("--model", required=True, help="path of model.keras")
    evaluate.add_argument("--data", required=True, help="dataset directory")
    evaluate.add_argument(
        "--split",
        choices=("train", "validation", "test"),
        help="default: test if present, else validation",
    )

    predict = commands.add_parser("predict", help="class and probability per image")
    predict.add_argument("--model", required=True, help="path of model.keras")
    predict.add_argument("images", nargs="+", help="image files")

    demo = commands.add_parser("make-demo-data", help="write a synthetic image set")
    demo.add_argument("out", help="output directory (Keras layout)")
    demo.add_argument(
        "--classes", type=int, default=None, help="number of classes (default 2, or the --shapes)"
    )
    demo.add_argument(
        "--shapes",
        type=_names,
        default=None,
        help="comma-separated shapes to draw, one class each (default: the first --classes of "
        "circle,square,triangle,cross,ring,diamond,star,crescent)",
    )
    demo.add_argument("--per-class", type=int, default=40, help="training images per class")
    demo.add_argument("--size", type=int, default=64, help="image side in pixels")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--random-colours",
        dest="class_hues",
        action="store_false",
        help="random colours: only the shape tells the classes apart (default: a hue per class)",
    )
    demo.add_argument(
        "--variation",
        type=float,
        default=1.0,
        help="share (0-1) of the shapes' range of position, size and rotation (default 1)",
    )
    demo.add_argument(
        "--overwrite",
        action="store_true",
        help="replace train/validation/test folders already in OUT",
    )

    report = commands.add_parser(
        "report", help="plots and report.md of a search, finished or still running"
    )
    report.add_argument("run_dir", help="run directory of a search")
    report.add_argument(
        "--out", help="folder for report.md and the plots (default: RUN_DIR/report)"
    )
    add_cache_parser(commands)
    return parser


def _tune(args: argparse.Namespace) -> int:
    from tuning.config import load_config, parse_overrides
    from tuning.search import resume_search, run_search

    if args.engine:
        # --engine is --set engine=ENGINE, read first: a --set engine=... as well wins.
        args.overrides.insert(0, f"engine={args.engine}")
    if args.resume:
        if args.out:
            raise ValueError("--out: a resumed search writes to its own run directory")
        if args.warm_start:
            raise ValueError("--warm-start: a resumed search keeps the trials it was seeded with")
        from pathlib import Path

        from tuning.run_dir import CONFIG_FILE

        # --set alone changes the run's own config; --config replaces it.
        base = args.config or Path(args.resume) / CONFIG_FILE
        given = args.config is not None or bool(args.overrides)
        result = resume_search(
            args.resume,
            data_dir=args.data,
            config=load_config(base, parse_overrides(args.overrides)) if given else None,
            force=args.force,
            address=args.address,
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
            progress=not args.quiet,
        )
    else:
        if not args.data or not args.out:
            raise ValueError("--data and --out are required (or --resume RUN_DIR)")
        if args.force:
            raise ValueError("--force only applies to --resume")
        config = load_config(args.config, parse_overrides(args.overrides))
        result = run_search(
            config,
            args.data,
            args.out,
            address=args.address,
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
            progress=not args.quiet,
            warm_start=args.warm_start,
        )
    best = result.best
    print(
        f"best trial {best.trial_id}: val_accuracy={best.val_accuracy:.4f} "
        f"after {best.epochs} epochs"
    )
    print(f"hyperparameters: {json.dumps(best.searched, sort_keys=True)}")
    print(f"features: {len(result.cache.misses)} computed, {len(result.cache.hits)} from cache")
    print(f"results: {result.run_dir}")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    import yaml

    from core.backbones import get_backbone
    from search_spaces import load_space
    from tuning.config import load_config, parse_overrides

    config = load_config(args.config, parse_overrides(args.overrides))
    space = load_space(config.searcher.space)
    spec = get_backbone(config.features.backbone)
    space.validate_for_backbone(spec.num_blocks, spec.name)
    print(yaml.safe_dump({"config": config.to_dict(), "space": space.to_dict()}, sort_keys=False))
    return 0


def _export(args: argparse.Namespace) -> int:
    from tuning.export import export_best

    config = export_best(args.run_dir, args.out, force=args.force)
    print(f"best trial {config.trial_id} ({config.metric}={config.value:.4f}) -> {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from tuning.final import train_final
    from tuning.run_dir import MODEL_FILE

    metrics = train_final(
        args.config,
        args.data,
        args.out,
        cache_dir=args.cache_dir,
        force=args.force,
        epoch_weights=args.epoch_weights,
    )
    kept = f"the weights of epoch {metrics.kept_epoch} of {metrics.epochs}"
    print(f"model: {args.out}/{MODEL_FILE} ({kept})")
    print(f"validation accuracy: {metrics.validation_accuracy:.4f}")
    if metrics.test_accuracy is not None:
        print(f"test accuracy: {metrics.test_accuracy:.4f}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from core.inference import evaluate

    report = evaluate(args.model, args.data, args.split)
    print(
        f"{report['split']} accuracy: {report['accuracy']:.4f} on {report['count']} images"
        + (f" ({report['skipped']} unreadable skipped)" if report["skipped"] else "")
    )
    return 0


def _predict(args: argparse.Namespace) -> int:
    from core.inference import predict

    for prediction in predict(args.model, args.images):
        line = f"{prediction.path}\t{prediction.label}\t{prediction.probability:.4f}"
        # A fourth column only where the image's folder names its class (Keras layout).
        print(line if prediction.true_label is None else f"{line}\ttrue: {prediction.true_label}")
    return 0


def _names(text: str) -> list[str]:
    """A comma-separated list, e.g. ``--shapes ring,star``."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _make_demo_data(args: argparse.Namespace) -> int:
    from core.demo_data import make_demo_data

    summary = make_demo_data(
        args.out,
        classes=args.classes,
        shapes=args.shapes,
        per_class=args.per_class,
        size=args.size,
        seed=args.seed,
        overwrite=args.overwrite,
        class_hues=args.class_hues,
        variation=args.variation,
    )
    counts = ", ".join(f"{split} {count}" for split, count in summary.counts.items())
    print(f"wrote {summary.root} ({', '.join(summary.class_names)}): {counts}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from tuning.report import format_summary, write_report

    print(format_summary(write_report(args.run_dir, args.out)))
    return 0


COMMANDS = {
    "tune": _tune,
    "check-config": _check_config,
    "export": _export,
    "train": _train,
    "evaluate": _evaluate,
    "predict": _predict,
    "make-demo-data": _make_demo_data,
    "report": _report,
    "cache": run_cache_command,
}

# Errors a user can fix: printed as one line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("tensorflow", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from core.runtime import quiet_tensorflow

    # -v shows TensorFlow's C++ lines too; otherwise its INFO to ERROR lines are hidden.
    quiet_tensorflow(0 if args.verbose else None)
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as error:
        if args.verbose:
            raise
        print(f"bottletune {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
