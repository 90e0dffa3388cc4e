"""float16 against float32 features: the accuracy and the memory behind the default.

Both sides train the same trials (same data, random-init VGG16, hyperparameters
and seeds) on features cached as float32 and as float16, and compare:
- the validation accuracy each trial reaches after its epochs;
- the largest difference between the two trained models' validation
  probabilities;
- the bytes of the features the search would share.
Trials compute in float32 either way (batches are cast when sliced).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    add_output_flags,
    machine_info,
    machine_line,
    markdown_table,
    mb,
    positive_int,
    setup_logging,
    text_table,
    update_doc_section,
    write_results,
)

logger = logging.getLogger(__name__)

TRIALS: tuple[dict[str, Any], ...] = (
    {"unfreeze_blocks": 0, "augmentation": 0.0},
    {"unfreeze_blocks": 0, "augmentation": 0.5},
    {"unfreeze_blocks": 1, "augmentation": 0.0},
    {"unfreeze_blocks": 1, "augmentation": 0.5},
    {"unfreeze_blocks": 2, "augmentation": 0.5},
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dtype", description="float16 vs float32 cached features."
    )
    parser.add_argument("--size", type=positive_int, default=48, help="image side in px")
    parser.add_argument("--per-class", type=positive_int, default=40, help="training images")
    parser.add_argument("--classes", type=positive_int, default=3)
    parser.add_argument("--epochs", type=positive_int, default=6)
    parser.add_argument("--views", type=positive_int, default=2)
    add_output_flags(parser, "dtype")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from core.data import scan_dataset
    from core.demo_data import make_demo_data
    from core.features import FeatureCache, FeatureRequest
    from core.hyperparameters import Hyperparameters, TrainingSetup
    from core.runtime import configure_tensorflow
    from core.training import RecipeTrainer

    configure_tensorflow(None)
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench-dtype-") as temp:
        data = Path(temp) / "data"
        make_demo_data(data, classes=args.classes, per_class=args.per_class, size=args.size)
        index = scan_dataset(data)
        bundles = {
            dtype: FeatureCache(Path(temp) / "cache").ensure(
                index,
                FeatureRequest(
                    backbone="vgg16",
                    weights="none",
                    image_size=args.size,
                    cuts=("block5_pool", "block4_pool", "block3_pool"),
                    augmentations=(0.5,),
                    views=args.views,
                    dtype=dtype,
                ),
                progress=False,
            )  # fmt: skip
            for dtype in ("float32", "float16")
        }
        setup = TrainingSetup(
            "vgg16", "none", args.size, epochs=args.epochs, head_epochs=args.epochs // 2
        )
        rows: list[dict[str, Any]] = []
        for values in TRIALS:
            hparams = Hyperparameters(**values, dropout=0.3)
            outcome: dict[str, Any] = {"hyperparameters": values}
            probabilities = {}
            for dtype, bundle in bundles.items():
                trainer = RecipeTrainer(hparams, setup, bundle)
                while not trainer.done:
                    report = trainer.train_epoch()
                outcome[dtype] = report["val_accuracy"]
                model = trainer.finetune_model or trainer.head
                features = bundle.features(
                    trainer.cut if trainer.fine_tunes else trainer.top_cut, "validation"
                )
                probabilities[dtype] = model.predict(np.asarray(features, "float32"), verbose=0)
            outcome["max_probability_difference"] = float(
                np.max(np.abs(probabilities["float32"] - probabilities["float16"]))
            )
            rows.append(outcome)
            logger.info("%s", outcome)
    sizes = {dtype: bundle.nbytes for dtype, bundle in bundles.items()}
    header = ["unfreeze", "augmentation", "float32 val acc", "float16 val acc", "max abs Δp"]
    table = [
        [
            str(r["hyperparameters"]["unfreeze_blocks"]),
            f"{r['hyperparameters']['augmentation']:g}",
            f"{r['float32']:.3f}",
            f"{r['float16']:.3f}",
            f"{r['max_probability_difference']:.2g}",
        ]
        for r in rows
    ]
    mean32 = float(np.mean([r["float32"] for r in rows]))
    mean16 = float(np.mean([r["float16"] for r in rows]))
    summary = (
        f"mean validation accuracy: float32 {mean32:.3f}, float16 {mean16:.3f}; "
        f"shared features: float32 {mb(sizes['float32'])}, float16 {mb(sizes['float16'])}"
    )
    print(text_table(header, table))
    print(summary)
    results = {
        "settings": vars(args) | {"out": str(args.out)},
        "machine": info,
        "trials": rows,
        "bytes": sizes,
        "mean_val_accuracy": {"float32": mean32, "float16": mean16},
    }
    write_results(args.out, results)
    if not args.no_doc:
        body = (
            f"VGG16 (random init) at {args.size} px, {args.classes} classes × {args.per_class} "
            f"training images, {args.epochs} epochs per trial, {args.views} views at "
            f"strength 0.5; {machine_line(info)}.\n\n"
            + markdown_table(header, table)
            + f"\n\n{summary}."
        )
        update_doc_section("dtype", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
