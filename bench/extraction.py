"""Extraction throughput: a fresh feature-cache build against ``model.predict``.

cache
    ``FeatureCache.ensure`` on an empty cache: images decoded from disk (in
    background threads), the backbone up to the top requested cut, and every
    cut's entry written to disk. Timed end to end, model build included.
predict
    What a plain script does with the images already decoded in memory: build
    the same backbone up to the same cuts (one model with an output per cut,
    preprocessing inside), then ``model.predict`` at the same batch size. Timed
    end to end like the cache side, model build and first trace included, so
    both sides pay the same fixed costs and the ratio is what decoding from
    disk and writing the entries cost.

Runs alternate (cache, predict, cache, predict, ...) and the medians are
compared: throughput ratio = (images / cache seconds) / (images / predict seconds).
"""

from __future__ import annotations

import argparse
import logging
import statistics
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

TARGET = 0.9


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.extraction",
        description="Feature-cache build throughput against model.predict on in-memory images.",
    )
    parser.add_argument("--size", type=positive_int, default=64, help="image side in px")
    parser.add_argument(
        "--per-class", type=positive_int, default=100, help="training images per class (2 classes)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--repeats", type=positive_int, default=3, help="runs of each side")
    parser.add_argument("--threads", type=positive_int, default=2, help="TensorFlow threads")
    parser.add_argument(
        "--cuts",
        nargs="+",
        default=["block5_pool", "block4_pool", "block3_pool"],
        help="cuts to extract (default: those of unfreeze 0-2)",
    )
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    add_output_flags(parser, "extraction")
    return parser.parse_args(argv)


def predict_model(size: int, cuts: list[str]) -> Any:
    import keras

    from core.backbones import build_backbone
    from core.layers import BackbonePreprocess

    backbone = build_backbone(BACKBONE, WEIGHTS, size, seed=SEED)
    truncated = keras.Model(backbone.input, [backbone.get_layer(c).output for c in cuts])
    image = keras.Input(shape=(size, size, 3), name="image")
    return keras.Model(image, truncated(BackbonePreprocess(BACKBONE)(image)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from core.runtime import configure_tensorflow

    configure_tensorflow(args.threads)
    import keras

    from core.data import load_images, scan_dataset
    from core.demo_data import make_demo_data
    from core.features import FeatureCache, FeatureRequest

    machine = machine_info()
    started = time.perf_counter()
    cache_seconds: list[float] = []
    predict_seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bottletune-bench-") as scratch:
        root = Path(scratch)
        make_demo_data(root / "data", classes=2, per_class=args.per_class, size=args.size)
        index = scan_dataset(root / "data")
        records = [*index.splits["train"], *index.splits["validation"]]
        images = load_images(records, args.size).images
        count = len(images)
        check: dict[str, np.ndarray] = {}
        request = FeatureRequest(
            backbone=BACKBONE,
            weights=WEIGHTS,
            image_size=args.size,
            cuts=tuple(args.cuts),
            dtype=args.dtype,
            seed=SEED,
            extraction_batch_size=args.batch_size,
        )
        for repeat in range(args.repeats):
            cache = FeatureCache(root / f"cache-{repeat}")
            t0 = time.perf_counter()
            bundle = cache.ensure(index, request, progress=False)
            cache_seconds.append(time.perf_counter() - t0)
            if not check:
                check = {c: np.asarray(bundle.features(c, "validation")[:4]) for c in args.cuts}
            del bundle
            t0 = time.perf_counter()
            model = predict_model(args.size, args.cuts)
            outputs = model.predict(images, batch_size=args.batch_size, verbose=0)
            predict_seconds.append(time.perf_counter() - t0)
            del model
            keras.backend.clear_session()
            logger.info(
                "run %d: cache %.2f s, predict %.2f s",
                repeat + 1,
                cache_seconds[-1],
                predict_seconds[-1],
            )
        outputs = outputs if isinstance(outputs, list) else [outputs]
        n_train = len(index.splits["train"])
        difference = max(
            float(np.max(np.abs(out[n_train : n_train + 4] - check[c].astype("float32"))))
            for c, out in zip(args.cuts, outputs, strict=True)
        )
    keras.backend.clear_session()
    cache_median = statistics.median(cache_seconds)
    predict_median = statistics.median(predict_seconds)
    ratio = predict_median / cache_median
    header = (
        "side",
        "median s",
        "images/s",
        "runs (s)",
    )
    cells = [
        (
            "cache build (from disk, written to disk)",
            f"{cache_median:.2f}",
            f"{count / cache_median:.1f}",
            ", ".join(f"{s:.2f}" for s in cache_seconds),
        ),
        (
            "model.predict (images in memory)",
            f"{predict_median:.2f}",
            f"{count / predict_median:.1f}",
            ", ".join(f"{s:.2f}" for s in predict_seconds),
        ),
    ]
    settings_line = (
        f"VGG16 (random init) at {args.size} px, {count} images, cuts {', '.join(args.cuts)}, "
        f"{args.dtype}, batch {args.batch_size}, {args.threads} TensorFlow threads, "
        f"median of {args.repeats} alternating runs"
    )
    verdict = (
        f"Throughput ratio (cache / predict): **{ratio:.2f}** (target ≥ {TARGET}: "
        f"{'met' if ratio >= TARGET else 'not met'})."
    )
    print()
    print(settings_line)
    print(text_table(header, cells))
    print(verdict.replace("**", ""))
    print()
    results = {
        "benchmark": "extraction",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": time.perf_counter() - started,
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"images": count},
        "machine": {**machine, "load_average_after": load_average()},
        "cache_seconds": cache_seconds,
        "predict_seconds": predict_seconds,
        "cache_images_per_second": count / cache_median,
        "predict_images_per_second": count / predict_median,
        "ratio": ratio,
        "target": TARGET,
        "target_met": ratio >= TARGET,
        "max_abs_difference_cache_vs_predict": difference,
    }
    write_results(args.out, results)
    if not args.no_doc:
        update_doc_section(
            "extraction",
            f"{settings_line}; {machine_line(machine)}.\n\n"
            + markdown_table(header, cells)
            + f"\n\n{verdict}",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
