"""What cached augmented views cost in accuracy against fresh transforms every epoch.

An augmented trial either draws one of V cached views per image each epoch
(``views``: the frozen layers never run) or augments the decoded images afresh
every epoch and runs the frozen layers below its cut on them (``fresh``). This
benchmark trains the same fixed configurations both ways, at equal epochs and
with the same seeds, and reports the validation accuracy (mean over seeds) and
the seconds per epoch of each source:

- ``s=0``: no augmentation, the baseline that says whether augmentation helps
  on this data at all (if fresh does not beat it, the comparison means nothing);
- ``V=1, 2, 4, ...``: the first V cached views of strength s;
- ``fresh``: a new random transform of strength s every epoch.

The data is meant to need augmentation: few training images per class, drawn
in one centred, upright pose of middle size (``--train-variation 0``), and a
large validation split drawn separately over the shapes' full range of
position, rotation and size, which the recipe's transforms partly cover. The
shapes are in random colours, so only the shape tells the classes apart.

The backbone is VGG16 pretrained here on all eight demo shapes
(``--pretrain-shapes other``: only those this data does not show), in random
colours, at full variation, with a seed no other data uses (``--weights
shapes``, made and reused by ``bench/pretrained.py``): a local stand-in for
ImageNet weights, which cannot be downloaded on the machines this was written
on. Keras' random init does not do for this comparison: measured here, a
random-init VGG16 at 32 px and 64 px and a random-init MobileNet at 32 px gave
chance-level heads on shapes in random colours (MobileNet's top features were
~1e-21). ``--weights none --class-hues`` is the old setting (one hue per
class, so colour alone tells), ``--weights PATH`` any file.

Seeds vary the training and the views' draws; with ``--weights none`` each
seed is also a backbone of its own (random init seeded by it).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    SEED,
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

CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "head": {"unfreeze_blocks": 0},
    "unfreeze1": {"unfreeze_blocks": 1},
    "unfreeze2": {"unfreeze_blocks": 2},
}
"""The fixed configurations compared (the other hyperparameters come from the flags)."""

LAST_EPOCHS = 3
"""Validation accuracy is the mean of the last epochs of a run (one epoch is noisy)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.augmentation",
        description="Validation accuracy and cost of cached augmented views vs fresh transforms.",
    )
    parser.add_argument("--backbone", default="vgg16", help="registered backbone")
    parser.add_argument(
        "--weights",
        default="shapes",
        help='"shapes" (VGG16 pretrained here on other shapes, bench/pretrained.py), '
        '"none" (random init) or a weights file',
    )
    parser.add_argument(
        "--pretrain-shapes",
        choices=("all", "other"),
        default="all",
        help="what --weights shapes learns: all eight shapes, or only those this data does "
        "not show (measured: its features transfer too poorly for the comparison)",
    )
    parser.add_argument(
        "--pretrain-epochs", type=positive_int, default=None, help="epochs of --weights shapes"
    )
    parser.add_argument(
        "--pretrain-images",
        type=positive_int,
        default=None,
        help="training images of --weights shapes, shared among its shapes (default 1280)",
    )
    parser.add_argument("--size", type=positive_int, default=64, help="image side in px")
    parser.add_argument("--classes", type=positive_int, default=4)
    parser.add_argument("--train-per-class", type=positive_int, default=8)
    parser.add_argument("--validation-per-class", type=positive_int, default=60)
    parser.add_argument(
        "--class-hues",
        action="store_true",
        help="one hue per class (for random-init backbones); default: random colours",
    )
    parser.add_argument(
        "--train-variation",
        type=float,
        default=0.0,
        help="share of the shapes' pose range in the training split (validation: all of it)",
    )
    parser.add_argument(
        "--validation-variation",
        type=float,
        default=1.0,
        help="share of the shapes' pose range in the validation split",
    )
    parser.add_argument("--strength", type=float, default=1.0, help="augmentation strength s")
    parser.add_argument("--views", type=positive_int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seeds", type=positive_int, default=3, help="seeds 0 .. N-1")
    parser.add_argument("--epochs", type=positive_int, default=16, help="epochs per run")
    parser.add_argument(
        "--head-epochs", type=positive_int, default=4, help="phase-1 epochs of fine-tuning runs"
    )
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--head-learning-rate", type=float, default=1e-3)
    parser.add_argument("--finetune-learning-rate", type=float, default=1e-4)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument(
        "--configurations", nargs="+", choices=sorted(CONFIGURATIONS), default=list(CONFIGURATIONS)
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="TensorFlow threads")
    add_output_flags(parser, "augmentation")
    args = parser.parse_args(argv)
    if args.weights == "shapes" and args.backbone != "vgg16":
        parser.error(
            f"--weights shapes is a VGG16; pass --weights none or a file for {args.backbone}"
        )
    if not 0.0 < args.strength <= 1.0:
        parser.error(f"--strength {args.strength}: must be in (0, 1]")
    if args.weights == "shapes" and args.pretrain_shapes == "other" and args.classes > 6:
        parser.error(
            f"--classes {args.classes} leaves fewer than 2 other shapes to pretrain on; "
            "pass --pretrain-shapes all"
        )
    return args


def pretrain_settings(args: argparse.Namespace) -> Any:
    """The ``bench.pretrained`` settings of ``--weights shapes``."""
    from bench.pretrained import PretrainSettings
    from core.demo_data import SHAPES

    shapes = SHAPES[args.classes :] if args.pretrain_shapes == "other" else SHAPES
    settings = PretrainSettings(size=args.size, shapes=shapes)
    images = args.pretrain_images or settings.per_class * 8
    settings = dataclasses.replace(settings, per_class=max(2, images // len(shapes)))
    if args.pretrain_epochs:
        settings = dataclasses.replace(settings, epochs=args.pretrain_epochs)
    return settings


def make_data(root: Path, args: argparse.Namespace) -> Path:
    """Few training images and a large, separately drawn validation split."""
    from core.demo_data import make_demo_data

    common = {"classes": args.classes, "size": args.size, "class_hues": args.class_hues}
    make_demo_data(
        root / "small", per_class=args.train_per_class, seed=SEED,
        variation=args.train_variation, **common,
    )  # fmt: skip
    make_demo_data(
        root / "large", per_class=args.validation_per_class, seed=SEED + 1,
        variation=args.validation_variation, **common,
    )  # fmt: skip
    data = root / "data"
    data.mkdir()
    shutil.move(root / "small" / "train", data / "train")
    shutil.move(root / "large" / "train", data / "validation")
    return data


def sources(strength: float, views: list[int]) -> list[tuple[str, float, int | None]]:
    """(label, strength, views kept; None = fresh) of each compared source."""
    rows: list[tuple[str, float, int | None]] = [("s=0", 0.0, 0)]
    rows += [(f"V={v}", strength, v) for v in views]
    return [*rows, ("fresh", strength, None)]


def bundle_for(bundle: Any, cuts: list[str], strength: float, views: int | None) -> Any:
    """The bundle a source's trials get: the first ``views`` views, or images and no views."""
    from core.features import view_name

    if views is None:
        return dataclasses.replace(bundle, views={})
    if views == 0:
        return dataclasses.replace(bundle, views={}, images={})
    kept = {name: bundle.views[name][:views] for name in (view_name(c, strength) for c in cuts)}
    return dataclasses.replace(bundle, views=kept, images={})


def run_one(bundle: Any, hparams: Any, setup: Any) -> dict[str, Any]:
    """Trains one run to the end; its accuracy and its per-phase seconds per epoch."""
    from core.training import RecipeTrainer

    trainer = RecipeTrainer(hparams, setup, bundle)
    reports = [trainer.train_epoch() for _ in range(setup.epochs)]
    phase_seconds: dict[str, float] = {}
    fresh_seconds: dict[str, float] = {}
    for phase in sorted({cost["phase"] for cost in trainer.epoch_costs}):
        costs = [cost for cost in trainer.epoch_costs if cost["phase"] == phase]
        # The first epoch of a phase traces its step functions: not what later epochs cost.
        timed = costs[1:] or costs
        phase_seconds[str(phase)] = statistics.median(c["epoch_seconds"] for c in timed)
        fresh_seconds[str(phase)] = statistics.median(c["fresh_seconds"] for c in timed)
    return {
        "val_accuracy": float(np.mean([r["val_accuracy"] for r in reports[-LAST_EPOCHS:]])),
        "final_val_accuracy": reports[-1]["val_accuracy"],
        "val_accuracy_by_epoch": [r["val_accuracy"] for r in reports],
        "seconds_per_epoch_by_phase": phase_seconds,
        "fresh_seconds_per_epoch_by_phase": fresh_seconds,
        "sources": {
            str(p): trainer.augmentation_source(p) for p in ((1, 2) if trainer.fine_tunes else (1,))
        },
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of one (configuration, source)."""
    accuracies = [run["val_accuracy"] for run in runs]
    phases = sorted({p for run in runs for p in run["seconds_per_epoch_by_phase"]})
    return {
        "val_accuracy_mean": float(np.mean(accuracies)),
        "val_accuracy_std": float(np.std(accuracies)),
        "seconds_per_epoch_by_phase": {
            p: float(np.mean([run["seconds_per_epoch_by_phase"][p] for run in runs]))
            for p in phases
        },
        "fresh_seconds_per_epoch_by_phase": {
            p: float(np.mean([run["fresh_seconds_per_epoch_by_phase"][p] for run in runs]))
            for p in phases
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from core.backbones import get_backbone
    from core.data import load_images, scan_dataset
    from core.features import FeatureCache, FeatureRequest
    from core.hyperparameters import Hyperparameters, TrainingSetup
    from core.runtime import configure_tensorflow

    configure_tensorflow(args.threads)
    pretrained = None
    if args.weights == "shapes":
        from bench.pretrained import ensure_pretrained

        path, pretrained = ensure_pretrained(pretrain_settings(args))
        args.weights = str(path)
    command = shlex.join(
        ["python", "-m", "bench.augmentation", *(sys.argv[1:] if argv is None else argv)]
    )
    started = time.perf_counter()
    info = machine_info()
    spec = get_backbone(args.backbone)
    depths = sorted({CONFIGURATIONS[name]["unfreeze_blocks"] for name in args.configurations})
    cuts = spec.cuts_for(depths)
    compared = sources(args.strength, sorted(set(args.views)))
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    extraction_seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-augmentation-") as temp:
        index = scan_dataset(make_data(Path(temp), args))
        counts = {split: len(records) for split, records in index.splits.items()}
        train_images = load_images(index.splits["train"], args.size).images
        for seed in range(args.seeds):
            extraction_started = time.perf_counter()
            request = FeatureRequest(
                backbone=args.backbone, weights=args.weights, image_size=args.size,
                cuts=tuple(cuts), augmentations=(args.strength,), views=max(args.views),
                seed=seed,
            )  # fmt: skip
            bundle = FeatureCache(Path(temp) / f"cache-{seed}").ensure(
                index, request, progress=False
            )
            bundle.images = {"train": train_images}
            extraction_seconds.append(time.perf_counter() - extraction_started)
            setup = TrainingSetup(
                args.backbone, args.weights, args.size, epochs=args.epochs,
                head_epochs=args.head_epochs, seed=seed,
            )  # fmt: skip
            for name in args.configurations:
                for label, strength, views in compared:
                    hparams = Hyperparameters(
                        augmentation=strength, batch_size=args.batch_size, dropout=args.dropout,
                        head_learning_rate=args.head_learning_rate,
                        finetune_learning_rate=args.finetune_learning_rate,
                        **CONFIGURATIONS[name],
                    )  # fmt: skip
                    run = run_one(bundle_for(bundle, cuts, strength, views), hparams, setup)
                    logger.info(
                        "seed %d, %s, %s: val_accuracy %.3f, %s s/epoch",
                        seed, name, label, run["val_accuracy"],
                        run["seconds_per_epoch_by_phase"],
                    )  # fmt: skip
                    runs.setdefault((name, label), []).append(run)

    rows = []
    for name in args.configurations:
        for label, strength, views in compared:
            rows.append(
                {
                    "configuration": name,
                    **CONFIGURATIONS[name],
                    "source": label,
                    "augmentation": strength,
                    "views": views,
                    **summarize(runs[(name, label)]),
                    "runs": runs[(name, label)],
                }
            )
    header = (
        "configuration", "source", "val acc (mean)", "± std", "vs fresh",
        "s/epoch phase 1", "s/epoch phase 2", "of which fresh (1 / 2)",
    )  # fmt: skip
    fresh_accuracy = {
        row["configuration"]: row["val_accuracy_mean"] for row in rows if row["source"] == "fresh"
    }

    def seconds(row: dict[str, Any], phase: str, key: str = "seconds_per_epoch_by_phase") -> str:
        value = row[key].get(phase)
        return "-" if value is None else f"{value:.3f}"

    cells = [
        (
            row["configuration"],
            row["source"],
            f"{row['val_accuracy_mean']:.3f}",
            f"{row['val_accuracy_std']:.3f}",
            f"{row['val_accuracy_mean'] - fresh_accuracy[row['configuration']]:+.3f}",
            seconds(row, "1"),
            seconds(row, "2"),
            f"{seconds(row, '1', 'fresh_seconds_per_epoch_by_phase')} / "
            f"{seconds(row, '2', 'fresh_seconds_per_epoch_by_phase')}",
        )
        for row in rows
    ]
    weights_label = f"weights {args.weights}"
    if pretrained is not None:
        from core.demo_data import SHAPES

        learned = pretrained["settings"]
        shapes = learned.get("shapes", SHAPES)  # records made before the key: all eight
        weights_label = (
            f"pretrained here on {', '.join(shapes)} for {learned['epochs']} epochs, "
            f"{pretrained['val_accuracy_by_epoch'][-1]:.2f} on their validation split"
        )
    colours = "one hue per class" if args.class_hues else "random colours"
    settings_line = (
        f"{args.backbone} ({weights_label}) at {args.size} px, {args.classes} shapes "
        f"({colours}), {counts['train']} train (pose variation {args.train_variation:g}) / "
        f"{counts['validation']} validation images (pose variation {args.validation_variation:g}), "
        f"strength {args.strength:g}, {args.epochs} epochs ({args.head_epochs} head epochs before "
        f"fine-tuning), batch {args.batch_size}, {args.seeds} seeds; val acc = mean of the last "
        f"{LAST_EPOCHS} epochs, s/epoch = median after each phase's first epoch"
    )
    print()
    print(settings_line)
    print(text_table(header, cells))
    print(f"extraction per seed (plain cuts + {max(args.views)} views): "
          f"{statistics.mean(extraction_seconds):.1f} s")  # fmt: skip
    print(f"reproduce: {command}")
    print()
    results = {
        "benchmark": "augmentation",
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": time.perf_counter() - started,
        "settings": {**vars(args), "out": str(args.out), "cuts": cuts, "counts": counts},
        "machine": {**info, "load_average_after": load_average()},
        "extraction_seconds_per_seed": extraction_seconds,
        "pretrained": pretrained,
        "results": rows,
    }
    write_results(args.out, results)
    if not args.no_doc:
        body = f"{settings_line}; {machine_line(info)}.\n\n" + markdown_table(header, cells)
        update_doc_section("augmentation", body + f"\n\nReproduce: `{command}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
