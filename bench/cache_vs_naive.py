"""Per-epoch time of one trial: cached bottleneck features against a naive full-VGG16 fit.

Both sides train the same trial (same data, same random-init VGG16, same head,
batch size and optimizer) and are timed in the same process, epochs interleaved
so that a noisy machine slows both alike. Each pair runs at one
``unfreeze_blocks`` k and one augmentation strength s (0 = none):

cached
    What a bottletune trial does: ``RecipeTrainer`` on the output of the block
    below the trained ones, read from a ``FeatureCache``. With s > 0 it draws
    one cached augmented view per image per epoch, or, at the cuts where the
    cache plan (``core.plan``) chooses fresh augmentation, augments the decoded
    images anew and runs the frozen layers below the cut every epoch. The
    one-off extraction of what the plan stores is timed separately. At those
    cuts the same pair is also timed on views (``--no-compare-views`` skips
    it), so the table shows what the plan's choice costs in speed.
naive
    What a plain Keras + Ray Tune script does: uint8 image -> [augmentation
    layers, when s > 0] -> VGG16 preprocessing -> full VGG16 (frozen below the
    cut, trainable above it) -> the same head, trained on the images every
    epoch, with validation.

The ideal compute ratio counts the FLOPs each epoch must do, analytically: a
conv layer costs ``2 * H * W * Cin * Cout * kh * kw`` per image forward (output
size H x W), a dense layer ``2 * in * out``; pooling, preprocessing,
augmentation and the optimizer are ignored. Training a layer costs ~3 forwards
(forward + backward), a frozen layer run by the naive model one forward,
validation one forward. The head is negligible next to any conv block, except
for k = 0 where it is all the cached epoch computes; it is counted so that
ratio is finite.

Both sides step through their batches with the loop RecipeTrainer uses
(``train_on_batch``/``test_on_batch``). ``model.fit`` feeds batches through a
tf.data pipeline whose autotune thread was seen, with TensorFlow 2.21, to hold
the end of each epoch until its doubling sleep ran out; bottletune's trainer
avoids that, and so does the naive side here, so the ratio measures the cache.

The diagnosis (skip it with ``--no-diagnose``) adds, for each fine-tuning
depth, a per-batch breakdown of the cached phase-2 step (forward only against
``train_on_batch``) at several batch sizes, to explain a measured ratio below
the ideal one.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
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
    load_average,
    machine_info,
    machine_line,
    markdown_table,
    non_negative_float,
    positive_int,
    setup_logging,
    text_table,
    update_doc_section,
    write_results,
)
from core.backbones import apply_layers, build_backbone, get_backbone, split_layers
from core.features import FeatureBundle
from core.hyperparameters import Hyperparameters, TrainingSetup
from core.plan import FRESH_COST_LIMIT

logger = logging.getLogger(__name__)

UNFREEZE_BLOCKS = (0, 1, 2)
HEAD_EPOCHS = 1
"""Phase-1 epochs a fine-tuning trial runs first; not timed."""
TARGET_K0 = 50.0
TARGET_FRACTION_OF_IDEAL = 0.8


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
        self, prefix_names: set[str], n_train: int, n_validation: int, *, frozen_runs: str
    ) -> int:
        """FLOPs of one epoch (training + validation) for a cut at ``prefix_names``.

        Args:
            prefix_names: Conv layers below the cut (frozen).
            n_train: Training images.
            n_validation: Validation images.
            frozen_runs: Where the frozen layers run every epoch: "always"
                (naive), "training" (fresh augmentation: validation reads the
                cache) or "never" (their output is read from the cache).
        """
        frozen, trained = self.split(prefix_names)
        trained += self.head
        in_training = frozen if frozen_runs in ("training", "always") else 0
        in_validation = frozen if frozen_runs == "always" else 0
        return n_train * (3 * trained + in_training) + n_validation * (trained + in_validation)


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cache_vs_naive",
        description="Per-epoch time of one trial on cached features vs. a naive full-VGG16 fit.",
    )
    parser.add_argument("--size", type=positive_int, default=96, help="image side in px")
    parser.add_argument(
        "--per-class",
        type=positive_int,
        default=80,
        help="training images per class (2 classes; validation gets half as many)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument(
        "--epochs", type=positive_int, default=3, help="timed epochs per side (after 1 warm-up)"
    )
    parser.add_argument(
        "--augmentation",
        type=float,
        default=1.0,
        help="strength of the augmented pairs (the recipe's transforms at 1)",
    )
    parser.add_argument(
        "--views", type=positive_int, default=2, help="cached views (only extraction depends on it)"
    )
    parser.add_argument(
        "--fresh-cost-limit",
        type=non_negative_float,
        default=FRESH_COST_LIMIT,
        help="the plan's fresh_cost_limit (fresh augmentation where the frozen layers add "
        "at most this share to a fine-tuning epoch)",
    )
    parser.add_argument(
        "--no-compare-views",
        dest="compare_views",
        action="store_false",
        help="at cuts the plan augments fresh, skip the same pair timed on cached views",
    )
    parser.add_argument("--threads", type=positive_int, default=2, help="TensorFlow threads")
    parser.add_argument(
        "--unfreeze", type=int, nargs="+", default=list(UNFREEZE_BLOCKS), help="depths k to time"
    )
    parser.add_argument(
        "--no-augmented", action="store_true", help="skip the augmented pairs (s > 0)"
    )
    parser.add_argument(
        "--no-diagnose",
        dest="diagnose",
        action="store_false",
        help="skip the per-batch breakdown of the phase-2 step at several batch sizes",
    )
    parser.add_argument(
        "--trials", type=positive_int, default=16, help="trials sharing one extraction"
    )
    parser.add_argument(
        "--trial-epochs", type=positive_int, default=6, help="epochs per trial (amortized figure)"
    )
    add_output_flags(parser, "cache_vs_naive")
    return parser.parse_args(argv)


def build_naive_model(
    hparams: Hyperparameters, image_size: int, head_shape: tuple[int, ...], num_classes: int
) -> tuple[Any, Any, list[Any]]:
    """The plain-Keras model: uint8 image -> [augmentation] -> preprocess -> VGG16 -> head.

    Seeds and optimizers follow ``RecipeTrainer``: the head is built right after
    seeding, the backbone reseeds for its random init (so it is the network the
    cache was computed with), and the optimizer is the phase's own (RMSprop for
    a head-only trial, SGD with momentum for fine-tuning). The augmentation
    layers are active in ``train_on_batch`` only, as in a plain Keras script.

    Returns:
        (model, preprocess layer, frozen prefix layers).
    """
    import keras

    from core.layers import BackbonePreprocess, build_augmentation
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
    augment = build_augmentation(hparams.augmentation, seed=SEED)
    x = augment(image) if augment is not None else image
    preprocess = BackbonePreprocess(BACKBONE, name="preprocess")
    outputs = head(apply_layers(suffix, apply_layers(prefix, preprocess(x))))
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


def hyperparameters(unfreeze_blocks: int, batch_size: int, augmentation: float) -> Hyperparameters:
    """The recipe's default hyperparameters at this depth and augmentation."""
    return Hyperparameters(
        unfreeze_blocks=unfreeze_blocks, batch_size=batch_size, augmentation=augmentation
    )


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
    augmentation: float,
    bundle: FeatureBundle,
    images: dict[str, np.ndarray],
    args: argparse.Namespace,
    flop_model: FlopModel,
    frozen_convs: dict[str, set[str]],
    planned: bool = True,
) -> dict[str, Any]:
    """Warms up and times one trial both ways, epochs interleaved.

    Args:
        bundle: The cached side's features: what the cache plan stores, with
            the training images where it augments fresh (``planned``), or
            views at every cut (a comparison the plan did not choose).
    """
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
    hparams = hyperparameters(unfreeze_blocks, args.batch_size, augmentation)
    # RecipeTrainer clears the Keras session, so it is built before the naive model.
    trainer = RecipeTrainer(hparams, setup, bundle)
    head_reports = [trainer.train_epoch() for _ in range(head_epochs)]
    cached_warmup = trainer.train_epoch()
    if cached_warmup["phase"] != timed_phase:
        raise RuntimeError(f"expected phase {timed_phase}, got {cached_warmup['phase']}")

    head_shape = tuple(bundle.features(spec.top_cut, "train").shape[1:])
    num_classes = len(bundle.class_names)
    model, preprocess, prefix = build_naive_model(hparams, args.size, head_shape, num_classes)
    difference = naive_cut_difference(
        preprocess, prefix, images["validation"], bundle.features(cut, "validation")
    )
    train_y = targets(bundle.labels["train"], num_classes)
    validation_y = targets(bundle.labels["validation"], num_classes)
    naive_reports: list[dict[str, float]] = []

    def naive_epoch() -> dict[str, float]:
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
    naive_warmup = naive_epoch()
    for _ in range(args.epochs):
        cached_reports.append(trainer.train_epoch())
        naive_reports.append(naive_epoch())
    if any(report["phase"] != timed_phase for report in cached_reports):
        raise RuntimeError(f"a timed cached epoch was not in phase {timed_phase}")

    n_train, n_validation = len(images["train"]), len(images["validation"])
    below = frozen_convs[cut]
    source = trainer.augmentation_source(timed_phase)
    cached_flops = flop_model.epoch(
        below, n_train, n_validation, frozen_runs="training" if source == "fresh" else "never"
    )
    naive_flops = flop_model.epoch(below, n_train, n_validation, frozen_runs="always")
    cached_seconds = statistics.median(r["epoch_seconds"] for r in cached_reports)
    naive_seconds = statistics.median(r["epoch_seconds"] for r in naive_reports)
    speedup = naive_seconds / cached_seconds
    ideal = naive_flops / cached_flops
    keras.backend.clear_session()
    return {
        "unfreeze_blocks": unfreeze_blocks,
        "augmentation": augmentation,
        "cut": cut,
        "source": source,
        "planned": planned,
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
        "target": target_text(unfreeze_blocks, ideal),
        "target_met": target_met(unfreeze_blocks, speedup, ideal),
        "naive_effective_gflops_per_second": naive_flops / naive_seconds / 1e9,
        "cached_effective_gflops_per_second": cached_flops / cached_seconds / 1e9,
    }


def in_memory(bundle: FeatureBundle) -> FeatureBundle:
    """``bundle`` with its memory-mapped entries read, so the scratch folder can go."""
    bundle.cuts = {c: {s: np.array(a) for s, a in v.items()} for c, v in bundle.cuts.items()}
    bundle.views = {n: tuple(np.array(a) for a in v) for n, v in bundle.views.items()}
    return bundle


def source_text(row: dict[str, Any]) -> str:
    """The cached side's training input: plain features, views or fresh transforms."""
    source = {"none": "plain features"}.get(row["source"], row["source"])
    return source if row["planned"] else f"{source} (not planned)"


def target_text(unfreeze_blocks: int, ideal: float) -> str:
    if unfreeze_blocks == 0:
        return f">= {TARGET_K0:.0f}x"
    return f">= {TARGET_FRACTION_OF_IDEAL * ideal:.1f}x (80% of ideal)"


def target_met(unfreeze_blocks: int, speedup: float, ideal: float) -> bool:
    if unfreeze_blocks == 0:
        return speedup >= TARGET_K0
    return speedup >= TARGET_FRACTION_OF_IDEAL * ideal


def diagnose(
    unfreeze_blocks: int,
    bundle: FeatureBundle,
    args: argparse.Namespace,
    flop_model: FlopModel,
    frozen_convs: dict[str, set[str]],
) -> list[dict[str, Any]]:
    """Per-batch cost of the cached phase-2 step at several batch sizes.

    Measures, on the same fine-tuning model RecipeTrainer builds:
    ``predict_on_batch`` (forward only), ``train_on_batch`` (what trials do) and
    the naive frozen prefix's forward (what the cache saves), as seconds per
    image and effective GFLOP/s, so that the gap between the measured and the
    ideal ratio can be put on (a) per-batch overhead, (b) backprop efficiency.
    """
    import keras

    from core.training import RecipeTrainer

    spec = get_backbone(BACKBONE)
    cut = spec.cut_for(unfreeze_blocks)
    x_all = np.asarray(bundle.features(cut, "train"), dtype="float32")
    y_all = targets(bundle.labels["train"], len(bundle.class_names))
    frozen, trained = flop_model.split(frozen_convs[cut])
    rows = []
    for batch_size in sorted({8, 16, 32, 64, args.batch_size}):
        if batch_size > len(x_all):
            continue
        setup = TrainingSetup(BACKBONE, WEIGHTS, args.size, epochs=3, head_epochs=1, seed=SEED)
        trainer = RecipeTrainer(hyperparameters(unfreeze_blocks, batch_size, 0.0), setup, bundle)
        model = trainer._ensure_finetune()
        x, y = x_all[:batch_size], y_all[:batch_size]
        model.train_on_batch(x, y)
        model.predict_on_batch(x)
        repeats = max(3, 64 // batch_size)

        def timed(step: Any, repeats: int = repeats, x: np.ndarray = x, y: np.ndarray = y) -> float:
            started = time.perf_counter()
            for _ in range(repeats):
                step(x, y)
            return (time.perf_counter() - started) / repeats

        forward = timed(lambda a, _b, m=model: m.predict_on_batch(a))
        train = timed(lambda a, b, m=model: m.train_on_batch(a, b))
        # The naive model's extra work per image: the frozen prefix, forward only.
        backbone = build_backbone(BACKBONE, WEIGHTS, args.size, seed=SEED)
        prefix_model = keras.Model(backbone.input, backbone.get_layer(cut).output)
        images = np.zeros((batch_size, args.size, args.size, 3), "float32")
        prefix_model.predict_on_batch(images)
        prefix = timed(lambda _a, _b, m=prefix_model, i=images: m.predict_on_batch(i))
        rows.append(
            {
                "unfreeze_blocks": unfreeze_blocks,
                "batch_size": batch_size,
                "forward_ms_per_image": 1e3 * forward / batch_size,
                "train_ms_per_image": 1e3 * train / batch_size,
                "train_over_forward": train / forward,
                "trained_forward_gflops": trained * batch_size / forward / 1e9,
                "trained_train_gflops": 3 * trained * batch_size / train / 1e9,
                "frozen_prefix_ms_per_image": 1e3 * prefix / batch_size,
                "frozen_prefix_gflops": frozen * batch_size / prefix / 1e9,
            }
        )
        keras.backend.clear_session()
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    short = {"none": "", "views": "\nviews", "fresh": "\nfresh"}
    labels = [
        f"k={r['unfreeze_blocks']}\ns={r['augmentation']:g}{short[r['source']]}"
        + ("" if r["planned"] else "*")
        for r in rows
    ]
    positions = np.arange(len(rows))
    figure, (times, ratios) = plt.subplots(1, 2, figsize=(12, 4.2))
    times.bar(
        positions - 0.2, [r["naive"]["median_epoch_seconds"] for r in rows], 0.4, label="naive"
    )
    times.bar(
        positions + 0.2, [r["cached"]["median_epoch_seconds"] for r in rows], 0.4, label="cached"
    )
    times.set_yscale("log")
    times.set_ylabel("seconds per epoch (log)")
    times.set_xticks(positions, labels)
    times.legend()
    times.set_title("one trial's epoch")
    ideal = [r["ideal_compute_ratio"] for r in rows]
    ratios.bar(positions - 0.2, ideal, 0.4, label="ideal (FLOPs)")
    ratios.bar(positions + 0.2, [r["speedup"] for r in rows], 0.4, label="measured")
    ratios.set_yscale("log")
    ratios.set_ylabel("naive / cached (log)")
    ratios.set_xticks(positions, labels)
    ratios.legend()
    ratios.set_title("speed-up")
    if not all(r["planned"] for r in rows):
        figure.text(0.5, 0.01, "* not the cache plan's choice", ha="center", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark, prints the table and writes the JSON results (and the doc table)."""
    args = parse_args(argv)
    setup_logging()
    from core.runtime import configure_tensorflow

    # Thread pools are fixed by TensorFlow's first op: configure before anything else.
    configure_tensorflow(args.threads)

    import keras

    from core.data import load_images, scan_dataset
    from core.demo_data import make_demo_data
    from core.features import FeatureCache, FeatureRequest
    from core.model import build_head
    from core.plan import default_object_store_bytes, plan_for

    spec = get_backbone(BACKBONE)
    # Every trial trains its head on the top cut first, whatever --unfreeze says.
    cuts = list(dict.fromkeys([spec.top_cut, *(spec.cut_for(k) for k in args.unfreeze)]))
    strengths = [0.0] if args.no_augmented else [0.0, args.augmentation]
    machine = machine_info()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bottletune-bench-") as scratch:
        make_demo_data(
            Path(scratch) / "data", classes=2, per_class=args.per_class, size=args.size, seed=SEED
        )
        index = scan_dataset(Path(scratch) / "data")
        cache = FeatureCache(Path(scratch) / "cache")
        full_request = FeatureRequest(
            backbone=BACKBONE,
            weights=WEIGHTS,
            image_size=args.size,
            cuts=tuple(cuts),
            augmentations=tuple(s for s in strengths if s > 0),
            views=args.views,
            dtype="float32",
            seed=SEED,
        )
        # What a search with this space stores: views where they pay, fresh elsewhere.
        plan = plan_for(
            full_request,
            index,
            budget="auto",
            cache_location=str(cache.root),
            object_store_bytes=default_object_store_bytes(),
            probe=False,
            fresh_cost_limit=args.fresh_cost_limit,
        )
        extraction_started = time.perf_counter()
        bundle = in_memory(cache.ensure(index, plan.request(full_request), progress=False))
        extraction_seconds = time.perf_counter() - extraction_started
        fresh_cuts = [cut for cut, strength in plan.fresh if strength == args.augmentation]
        # The comparison: views at every cut (built after the timed extraction).
        compared = (
            in_memory(cache.ensure(index, full_request, progress=False))
            if fresh_cuts and args.compare_views
            else None
        )
        images = {}
        for split in ("train", "validation"):
            loaded = load_images(index.splits[split], args.size)
            if not np.array_equal(loaded.labels, bundle.labels[split]):
                raise RuntimeError(f"{split}: image order differs from the cache's")
            images[split] = loaded.images
    if fresh_cuts:
        bundle.images["train"] = images["train"]
    n_train, n_validation = len(images["train"]), len(images["validation"])
    view_cuts = [cut for cut in plan.view_cuts if len(strengths) > 1]
    logger.info(
        "extraction of %s (+%d views at %s) for %d images: %.2f s; fresh at %s",
        ", ".join(cuts),
        args.views if view_cuts else 0,
        ", ".join(view_cuts) or "no cut",
        n_train + n_validation,
        extraction_seconds,
        ", ".join(fresh_cuts) or "no cut",
    )

    reference = build_backbone(BACKBONE, WEIGHTS, args.size, seed=SEED)
    head_shape = tuple(bundle.features(spec.top_cut, "train").shape[1:])
    flop_model = FlopModel(
        conv=conv_flops(reference),
        head=dense_flops(
            build_head(
                head_shape, len(bundle.class_names), hyperparameters(0, args.batch_size, 0.0)
            )
        ),
    )
    frozen_convs = {cut: {layer.name for layer in split_layers(reference, cut)[0]} for cut in cuts}
    del reference
    keras.backend.clear_session()

    rows = []
    for augmentation in strengths:
        for unfreeze_blocks in args.unfreeze:
            logger.info("timing k=%d, s=%g (cached vs naive)...", unfreeze_blocks, augmentation)
            rows.append(
                run_pair(
                    unfreeze_blocks, augmentation, bundle, images, args, flop_model, frozen_convs
                )
            )
            if (
                compared is not None
                and augmentation > 0
                and spec.cut_for(unfreeze_blocks) in fresh_cuts
            ):
                logger.info(
                    "timing k=%d, s=%g on views (not the plan's)...", unfreeze_blocks, augmentation
                )
                rows.append(
                    run_pair(
                        unfreeze_blocks,
                        augmentation,
                        compared,
                        images,
                        args,
                        flop_model,
                        frozen_convs,
                        planned=False,
                    )
                )
    diagnosis: list[dict[str, Any]] = []
    if args.diagnose:
        for unfreeze_blocks in [k for k in args.unfreeze if k > 0]:
            logger.info("diagnosing k=%d...", unfreeze_blocks)
            diagnosis += diagnose(unfreeze_blocks, bundle, args, flop_model, frozen_convs)

    # Extraction shared by every trial and epoch of a search (views only by augmented ones).
    amortized_per_epoch = extraction_seconds / (args.trials * args.trial_epochs)
    for row in rows:
        amortized = row["cached"]["median_epoch_seconds"] + amortized_per_epoch
        row["cached_amortized_epoch_seconds"] = amortized
        row["amortized_speedup"] = row["naive"]["median_epoch_seconds"] / amortized

    header = (
        "k",
        "aug s",
        "cached input",
        "cached s/epoch",
        "naive s/epoch",
        "speed-up",
        "ideal (FLOPs)",
        "measured/ideal",
        "target",
        "met",
    )
    cells = [
        (
            str(r["unfreeze_blocks"]),
            f"{r['augmentation']:g}",
            source_text(r),
            f"{r['cached']['median_epoch_seconds']:.3f}",
            f"{r['naive']['median_epoch_seconds']:.3f}",
            f"{r['speedup']:.1f}×",
            f"{r['ideal_compute_ratio']:.1f}×",
            f"{r['measured_over_ideal']:.2f}",
            r["target"].replace("x", "×"),
            "yes" if r["target_met"] else "**no**",
        )
        for r in rows
    ]
    settings_line = (
        f"VGG16 (random init) at {args.size} px, {n_train} train + {n_validation} validation "
        f"images, batch {args.batch_size}, {args.threads} TensorFlow threads; median of "
        f"{args.epochs} epochs after 1 warm-up, validation included; augmented pairs at "
        f"s = {args.augmentation:g} ({args.views} cached views)"
    )
    print()
    print(settings_line)
    print(text_table(header, cells))
    extraction_line = (
        f"Extraction of what the cache plan stores (once, cuts {', '.join(cuts)}"
        + (f"; {args.views} views at {', '.join(view_cuts)}" if view_cuts else "")
        + f"): {extraction_seconds:.1f} s; shared by {args.trials} trials × "
        f"{args.trial_epochs} epochs it adds {amortized_per_epoch:.3f} s per epoch."
        + (
            f" The plan (fresh_cost_limit {args.fresh_cost_limit:g}) augments fresh at "
            f"{', '.join(fresh_cuts)}: those trials run the frozen layers below the cut on "
            "freshly augmented images every epoch, so their ideal ratio is about 1; the "
            "rows marked 'not planned' time the same trial on cached views."
            if fresh_cuts
            else ""
        )
    )
    print(extraction_line)
    diagnosis_header = (
        "k",
        "batch",
        "forward ms/img",
        "train_on_batch ms/img",
        "train/forward",
        "trained blocks GFLOP/s (fwd / train)",
        "frozen prefix fwd ms/img (GFLOP/s)",
    )
    diagnosis_cells = [
        (
            str(d["unfreeze_blocks"]),
            str(d["batch_size"]),
            f"{d['forward_ms_per_image']:.2f}",
            f"{d['train_ms_per_image']:.2f}",
            f"{d['train_over_forward']:.1f}",
            f"{d['trained_forward_gflops']:.1f} / {d['trained_train_gflops']:.1f}",
            f"{d['frozen_prefix_ms_per_image']:.2f} ({d['frozen_prefix_gflops']:.1f})",
        )
        for d in diagnosis
    ]
    if diagnosis:
        print(text_table(diagnosis_header, diagnosis_cells))
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
            "train_images": n_train,
            "validation_images": n_validation,
            "batch_size": args.batch_size,
            "timed_epochs": args.epochs,
            "warmup_epochs": 1,
            "head_epochs_before_finetune": HEAD_EPOCHS,
            "threads": args.threads,
            "augmentation": args.augmentation,
            "views": args.views,
            "fresh_cost_limit": args.fresh_cost_limit,
            "statistic": "median",
        },
        "plan": {"view_cuts": view_cuts, "fresh_cuts": fresh_cuts, "choices": plan.choices},
        "machine": {**machine, "load_average_after": load_average()},
        "extraction": {
            "seconds": extraction_seconds,
            "cuts": cuts,
            "amortized_seconds_per_epoch": amortized_per_epoch,
        },
        "flops_per_image_forward": {"conv": flop_model.conv, "head": flop_model.head},
        "results": rows,
        "diagnosis": diagnosis,
    }
    write_results(args.out, results)
    if not args.no_doc:
        image = IMG_DIR / "bench-cache-vs-naive.png"
        plot(rows, image)
        body = (
            f"{settings_line}; {machine_line(machine)}.\n\n"
            + markdown_table(header, cells)
            + f"\n\n{extraction_line}\n\n![cached vs naive](img/{image.name})"
        )
        if diagnosis:
            body += (
                "\n\nPhase-2 step of the cached trial, per image, by batch size "
                "(the diagnosis):\n\n" + markdown_table(diagnosis_header, diagnosis_cells)
            )
        update_doc_section("cache_vs_naive", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
