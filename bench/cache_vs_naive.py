"""Per-epoch time of one trial: cached bottleneck features against a naive full-VGG16 fit.

Both sides train the same trial (same data, same random-init VGG16, same head,
batch size and optimizer) and are timed in the same process, epochs interleaved
so that a noisy machine slows both alike:

cached
    What a bottletune trial does: ``RecipeTrainer`` on the output of the block
    below the trained ones, read from a ``FeatureCache`` (no augmentation). The
    one-off extraction is timed separately.
naive
    What a plain Keras + Ray Tune script does: image -> VGG16 preprocessing ->
    full VGG16 (frozen below the cut, trainable above it) -> the same head,
    trained on the uint8 images every epoch, with validation.

Both epochs include their validation pass (``RecipeTrainer.train_epoch``
evaluates; the naive ``fit`` gets ``validation_data``).

The ideal compute ratio counts the FLOPs each epoch must do, analytically: a
conv layer costs ``2 * H * W * Cin * Cout * kh * kw`` per image forward (output
size H x W), a dense layer ``2 * in * out``; pooling, preprocessing and the
optimizer are ignored. Training a layer costs ~3 forwards (forward + backward),
a frozen layer run by the naive model one forward, validation one forward. The
head is negligible next to any conv block, except for ``unfreeze_blocks=0``
where it is all the cached epoch computes; it is counted so that ratio is finite.

Both sides step through their batches with the same loop as RecipeTrainer
(``train_on_batch``/``test_on_batch``). ``model.fit`` feeds batches through a
tf.data pipeline whose autotune thread was seen, with TensorFlow 2.21, to hold
the end of each epoch until its doubling sleep (10 ms, 20 ms, ...) ran out, so
epoch times snapped up to about 2.56, 5.12 or 10.24 s; bottletune's trainer
avoids that, and so does the naive side here, so the ratio measures the cache.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.backbones import apply_layers, build_backbone, get_backbone, split_layers
from core.data import scan_dataset
from core.demo_data import make_demo_data
from core.features import FeatureBundle, FeatureCache
from core.hyperparameters import Hyperparameters, TrainingSetup
from core.runtime import configure_tensorflow

logger = logging.getLogger(__name__)

BACKBONE = "vgg16"
WEIGHTS = "none"
SEED = 0
UNFREEZE_BLOCKS = (0, 1, 2)
HEAD_EPOCHS = 1
"""Phase-1 epochs a fine-tuning trial runs first; not timed."""
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "cache_vs_naive.json"


@dataclass(frozen=True)
class FlopModel:
    """Forward FLOPs per image of every VGG16 conv layer and of the head.

    Attributes:
        conv: Forward FLOPs per image by conv layer name, bottom to top.
        head: Forward FLOPs per image of the head's dense layers.
    """

    conv: dict[str, int]
    head: int

    def split(self, prefix_names: set[str]) -> tuple[int, int]:
        """(FLOPs of the conv layers in ``prefix_names``, FLOPs of the others)."""
        below = sum(f for name, f in self.conv.items() if name in prefix_names)
        return below, sum(self.conv.values()) - below

    def epoch(
        self, prefix_names: set[str], n_train: int, n_validation: int, *, runs_frozen: bool
    ) -> int:
        """FLOPs of one epoch (training + validation) for a cut at ``prefix_names``.

        Args:
            prefix_names: Conv layers below the cut (frozen).
            n_train: Training images.
            n_validation: Validation images.
            runs_frozen: Whether the frozen layers run every epoch (naive) or
                their output is read from the cache (cached).
        """
        frozen, trained = self.split(prefix_names)
        trained += self.head
        frozen_per_image = frozen if runs_frozen else 0
        return n_train * (3 * trained + frozen_per_image) + n_validation * (
            trained + frozen_per_image
        )


def conv_flops(model: Any) -> dict[str, int]:
    """Forward FLOPs per image of each Conv2D layer, from its output shape and kernel."""
    import keras

    flops: dict[str, int] = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, c_out = layer.output.shape
            k_height, k_width, c_in, _ = layer.kernel.shape
            flops[layer.name] = 2 * height * width * c_in * c_out * k_height * k_width
    return flops


def dense_flops(model: Any) -> int:
    """Forward FLOPs per image of every Dense layer (``2 * in * out``)."""
    import keras

    return sum(
        2 * int(np.prod(layer.kernel.shape))
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense)
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 1")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cache_vs_naive",
        description="Per-epoch time of one trial on cached features vs. a naive full-VGG16 fit.",
    )
    parser.add_argument("--size", type=positive_int, default=48, help="image side in px")
    parser.add_argument(
        "--per-class", type=positive_int, default=60, help="training images per class (2 classes)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument(
        "--epochs", type=positive_int, default=3, help="timed epochs per side (after 1 warm-up)"
    )
    parser.add_argument("--threads", type=positive_int, default=2, help="TensorFlow threads")
    parser.add_argument(
        "--trials",
        type=positive_int,
        default=16,
        help="trials sharing one extraction, for the amortized figure",
    )
    parser.add_argument(
        "--trial-epochs",
        type=positive_int,
        default=6,
        help="epochs per trial, for the amortized figure (configs/demo.yaml's max_epochs)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    return parser.parse_args(argv)


def machine_info() -> dict[str, Any]:
    import keras
    import tensorflow as tf

    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_available": len(affinity) if affinity is not None else None,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }


def load_average() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def build_naive_model(
    hparams: Hyperparameters, image_size: int, head_shape: tuple[int, ...], num_classes: int
) -> tuple[Any, Any, list[Any]]:
    """The plain-Keras model: uint8 image -> preprocess -> VGG16 -> head, compiled.

    Seeds and optimizers follow ``RecipeTrainer``: the head is built right after
    seeding, the backbone reseeds for its random init (so it is the network the
    cache was computed with), and the optimizer is the phase's own (RMSprop for
    a head-only trial, SGD with momentum for fine-tuning).

    Returns:
        (model, preprocess layer, frozen prefix layers).
    """
    import keras

    from core.layers import BackbonePreprocess
    from core.model import build_head, freeze, loss_for, unfreeze

    unfreeze_blocks = hparams.unfreeze_blocks
    keras.utils.set_random_seed(SEED)
    head = build_head(head_shape, num_classes, hparams)
    backbone = build_backbone(BACKBONE, WEIGHTS, image_size, seed=SEED)
    keras.utils.set_random_seed(SEED + 1000)
    prefix, suffix = split_layers(backbone, get_backbone(BACKBONE).cut_for(unfreeze_blocks))
    freeze(prefix)
    unfreeze(suffix)
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    preprocess = BackbonePreprocess(BACKBONE, name="preprocess")
    outputs = head(apply_layers(suffix, apply_layers(prefix, preprocess(image))))
    model = keras.Model(image, outputs, name=f"naive_{BACKBONE}_unfreeze{unfreeze_blocks}")
    optimizer = (
        keras.optimizers.SGD(
            learning_rate=hparams.finetune_learning_rate, momentum=hparams.momentum
        )
        if unfreeze_blocks
        else keras.optimizers.RMSprop(learning_rate=hparams.head_learning_rate)
    )
    model.compile(optimizer=optimizer, loss=loss_for(num_classes), metrics=["accuracy"])
    return model, preprocess, prefix


def hyperparameters(unfreeze_blocks: int, batch_size: int) -> Hyperparameters:
    """The recipe's default hyperparameters, without augmentation, at this depth."""
    return Hyperparameters(unfreeze_blocks=unfreeze_blocks, batch_size=batch_size, augmentation=0.0)


def targets(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels as the recipe's loss wants them (as ``RecipeTrainer`` makes them)."""
    if num_classes == 2:
        return labels.astype("float32").reshape(-1, 1)
    return labels.astype("int32")


def naive_cut_difference(
    preprocess: Any, prefix: list[Any], images: np.ndarray, cached: np.ndarray
) -> float:
    """Largest |naive frozen-prefix output - cached features| on a few images.

    Zero (up to float noise) proves the naive model's frozen part is the very
    network the cache was computed with.
    """
    import keras

    if not prefix:
        return 0.0
    count = min(4, len(images))
    output = apply_layers(prefix, preprocess(images[:count]))
    return float(np.max(np.abs(keras.ops.convert_to_numpy(output) - cached[:count])))


def run_pair(
    unfreeze_blocks: int,
    bundle: FeatureBundle,
    args: argparse.Namespace,
    flop_model: FlopModel,
    frozen_convs: dict[str, set[str]],
) -> dict[str, Any]:
    """Warms up and times one trial both ways, epochs interleaved."""
    import keras

    from core.training import RecipeTrainer, array_batches, run_batches

    spec = get_backbone(BACKBONE)
    cut = spec.cut_for(unfreeze_blocks)
    head_epochs = HEAD_EPOCHS if unfreeze_blocks else 0
    setup = TrainingSetup(
        BACKBONE,
        WEIGHTS,
        args.size,
        epochs=head_epochs + 1 + args.epochs,
        head_epochs=HEAD_EPOCHS,
        seed=SEED,
    )
    timed_phase = 2 if unfreeze_blocks else 1
    hparams = hyperparameters(unfreeze_blocks, args.batch_size)
    # RecipeTrainer clears the Keras session, so it is built before the naive model.
    trainer = RecipeTrainer(hparams, setup, bundle)
    head_reports = [trainer.train_epoch() for _ in range(head_epochs)]
    cached_warmup = trainer.train_epoch()
    if cached_warmup["phase"] != timed_phase:
        raise RuntimeError(f"expected phase {timed_phase}, got {cached_warmup['phase']}")

    images = bundle.images
    if images is None:
        raise ValueError("the bundle must hold the images (include_images=True)")
    head_shape = tuple(bundle.features(spec.top_cut, "train").shape[1:])
    num_classes = len(bundle.class_names)
    model, preprocess, prefix = build_naive_model(hparams, args.size, head_shape, num_classes)
    difference = naive_cut_difference(
        preprocess, prefix, images["validation"], bundle.features(cut, "validation")
    )
    train_y = targets(bundle.labels["train"], num_classes)
    validation_y = targets(bundle.labels["validation"], num_classes)

    def naive_epoch() -> dict[str, float]:
        # Same batch loop as RecipeTrainer (train_on_batch / test_on_batch), so
        # that the ratio measures the cache and not two input pipelines.
        started = time.perf_counter()
        seed = len(naive_reports) + 1
        train = run_batches(
            model,
            array_batches(images["train"], train_y, args.batch_size, shuffle=True, seed=seed),
            train=True,
        )
        validation = run_batches(
            model,
            array_batches(
                images["validation"], validation_y, args.batch_size, shuffle=False, seed=0
            ),
            train=False,
        )
        return {
            "epoch_seconds": time.perf_counter() - started,
            "loss": train["loss"],
            "val_accuracy": validation["accuracy"],
        }

    cached_reports: list[dict[str, Any]] = []
    naive_reports: list[dict[str, float]] = []
    naive_warmup = naive_epoch()
    for _ in range(args.epochs):
        cached_reports.append(trainer.train_epoch())
        naive_reports.append(naive_epoch())
    if any(report["phase"] != timed_phase for report in cached_reports):
        raise RuntimeError(f"a timed cached epoch was not in phase {timed_phase}")

    n_train, n_validation = len(images["train"]), len(images["validation"])
    below = frozen_convs[cut]
    cached_flops = flop_model.epoch(below, n_train, n_validation, runs_frozen=False)
    naive_flops = flop_model.epoch(below, n_train, n_validation, runs_frozen=True)
    cached_seconds = statistics.median(r["epoch_seconds"] for r in cached_reports)
    naive_seconds = statistics.median(r["epoch_seconds"] for r in naive_reports)
    speedup = naive_seconds / cached_seconds
    ideal = naive_flops / cached_flops
    keras.backend.clear_session()
    return {
        "unfreeze_blocks": unfreeze_blocks,
        "cut": cut,
        "cached": {
            "median_epoch_seconds": cached_seconds,
            "epoch_seconds": [r["epoch_seconds"] for r in cached_reports],
            "warmup_seconds": cached_warmup["epoch_seconds"],
            "head_epoch_seconds": [r["epoch_seconds"] for r in head_reports],
            "loss": [r["loss"] for r in cached_reports],
            "val_accuracy": [r["val_accuracy"] for r in cached_reports],
            "epoch_flops": cached_flops,
        },
        "naive": {
            "median_epoch_seconds": naive_seconds,
            "epoch_seconds": [r["epoch_seconds"] for r in naive_reports],
            "warmup_seconds": naive_warmup["epoch_seconds"],
            "loss": [r["loss"] for r in naive_reports],
            "val_accuracy": [r["val_accuracy"] for r in naive_reports],
            "epoch_flops": naive_flops,
            "cut_max_abs_difference_to_cache": difference,
        },
        "speedup": speedup,
        "ideal_compute_ratio": ideal,
        "measured_over_ideal": speedup / ideal,
        "naive_effective_gflops_per_second": naive_flops / naive_seconds / 1e9,
        "cached_effective_gflops_per_second": cached_flops / cached_seconds / 1e9,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "unfreeze k",
        "cached s/epoch",
        "naive s/epoch",
        "speed-up (naive/cached)",
        "ideal compute ratio",
        "measured/ideal",
    )
    lines = [
        (
            str(row["unfreeze_blocks"]),
            f"{row['cached']['median_epoch_seconds']:.3f}",
            f"{row['naive']['median_epoch_seconds']:.3f}",
            f"{row['speedup']:.1f}x",
            f"{row['ideal_compute_ratio']:.1f}x",
            f"{row['measured_over_ideal']:.3f}",
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]

    def render(cells: tuple[str, ...]) -> str:
        return " | ".join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True))

    rule = "-+-".join("-" * width for width in widths)
    return "\n".join([render(header), rule, *(render(cells) for cells in lines)])


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark, prints the table and writes the JSON results.

    Args:
        argv: Command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        0 on success.
    """
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Thread pools are fixed by TensorFlow's first op: configure before anything else.
    configure_tensorflow(args.threads)

    import keras

    from core.model import build_head

    spec = get_backbone(BACKBONE)
    cuts = list(dict.fromkeys(spec.cut_for(k) for k in UNFREEZE_BLOCKS))
    load_before = load_average()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bottletune-bench-") as scratch:
        make_demo_data(
            Path(scratch) / "data", classes=2, per_class=args.per_class, size=args.size, seed=SEED
        )
        index = scan_dataset(Path(scratch) / "data")
        cache = FeatureCache(Path(scratch) / "cache")
        extraction_started = time.perf_counter()
        cache.ensure(
            index,
            backbone=BACKBONE,
            weights=WEIGHTS,
            image_size=args.size,
            cuts=cuts,
            seed=SEED,
            progress=False,
        )
        extraction_seconds = time.perf_counter() - extraction_started
        # Only the images entry is missing now: the cut entries are reused as trials reuse them.
        bundle = cache.ensure(
            index,
            backbone=BACKBONE,
            weights=WEIGHTS,
            image_size=args.size,
            cuts=cuts,
            include_images=True,
            seed=SEED,
            progress=False,
        )
    assert bundle.images is not None
    n_train, n_validation = len(bundle.images["train"]), len(bundle.images["validation"])
    logger.info(
        "extraction of %s for %d images: %.2f s",
        ", ".join(cuts),
        n_train + n_validation,
        extraction_seconds,
    )

    reference = build_backbone(BACKBONE, WEIGHTS, args.size, seed=SEED)
    head_shape = tuple(bundle.features(spec.top_cut, "train").shape[1:])
    flop_model = FlopModel(
        conv=conv_flops(reference),
        head=dense_flops(
            build_head(head_shape, len(bundle.class_names), hyperparameters(0, args.batch_size))
        ),
    )
    frozen_convs = {cut: {layer.name for layer in split_layers(reference, cut)[0]} for cut in cuts}
    del reference
    keras.backend.clear_session()

    rows = []
    for unfreeze_blocks in UNFREEZE_BLOCKS:
        logger.info("timing unfreeze_blocks=%d (cached vs naive)...", unfreeze_blocks)
        rows.append(run_pair(unfreeze_blocks, bundle, args, flop_model, frozen_convs))

    amortized_per_epoch = extraction_seconds / (args.trials * args.trial_epochs)
    for row in rows:
        amortized = row["cached"]["median_epoch_seconds"] + amortized_per_epoch
        row["cached_amortized_epoch_seconds"] = amortized
        row["amortized_speedup"] = row["naive"]["median_epoch_seconds"] / amortized

    table = format_table(rows)
    print()
    print(
        f"cache vs naive, one trial: VGG16 (random init) at {args.size} px, {n_train} train + "
        f"{n_validation} validation images, batch {args.batch_size}, {args.threads} threads; "
        f"median of {args.epochs} epochs after 1 warm-up (validation included)"
    )
    print(table)
    print()
    print(
        f"extraction (once, cuts {', '.join(cuts)}): {extraction_seconds:.2f} s; shared by "
        f"T={args.trials} trials x E={args.trial_epochs} epochs = "
        f"{amortized_per_epoch:.3f} s/epoch"
    )
    for row in rows:
        print(
            f"  k={row['unfreeze_blocks']}: cached + amortized extraction "
            f"{row['cached_amortized_epoch_seconds']:.3f} s/epoch -> speed-up "
            f"{row['amortized_speedup']:.1f}x"
        )
    print()

    results = {
        "benchmark": "cache_vs_naive",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": time.perf_counter() - started,
        "settings": {
            "backbone": BACKBONE,
            "weights": WEIGHTS,
            "seed": SEED,
            "image_size": args.size,
            "per_class": args.per_class,
            "classes": list(bundle.class_names),
            "train_images": n_train,
            "validation_images": n_validation,
            "batch_size": args.batch_size,
            "timed_epochs": args.epochs,
            "warmup_epochs": 1,
            "head_epochs_before_finetune": HEAD_EPOCHS,
            "threads": args.threads,
            "statistic": "median",
        },
        "machine": {
            **machine_info(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
        "extraction": {
            "seconds": extraction_seconds,
            "cuts": cuts,
            "images": n_train + n_validation,
            "amortized_trials": args.trials,
            "amortized_epochs_per_trial": args.trial_epochs,
            "amortized_seconds_per_epoch": amortized_per_epoch,
        },
        "flops_per_image_forward": {"conv": flop_model.conv, "head": flop_model.head},
        "results": rows,
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
