"""A stand-in for ImageNet weights: VGG16 pretrained here, on synthetic shapes.

The augmentation benchmark needs a backbone whose features carry what the
images show, and ImageNet weights cannot be downloaded on the machines this
was written on. Keras' random init does not do. Measured at 64 px, a head on
its block5 features stays at chance on shapes in random colours, whatever
the augmentation; and fed the unit-variance output of the layer before, each
conv layer of Keras' init passes on 0.6-0.8 of its standard deviation, so the
top conv's output is about 1% of the first one's. So this module pretrains
one, the way a pretrained backbone is made, on a data set of its own:

1. Layer-sequential unit-variance init (Mishkin and Matas, "All you need is
   a good init", 2016): each conv layer's kernel is scaled, in order, until
   its output has unit standard deviation on a batch of images, so that
   VGG16 without batch normalisation trains from scratch.
2. A few epochs of VGG16 with a global-average-pooled softmax head on demo
   shapes in random colours (no class hue: only the shape tells), drawn
   with a seed no benchmark's data uses: all eight by default, or only those
   a benchmark's data does not show (``PretrainSettings.shapes``).

The backbone's weights (without the head) go to a ``.weights.h5`` file,
loaded back through bottletune's own local-weights path (``weights=PATH``).
A file made with the same settings is reused: ``ensure_pretrained`` keys it
by them, and the JSON beside it records how well it learned.

Run ``python -m bench.pretrained`` to make one (about 11 minutes at 64 px on
2 cores).

Why 12 epochs, all eight shapes (measured with ``bench/augmentation.py`` at
64 px, 2026-12-03): after 8 epochs (0.57 on the shapes' validation split) no
augmentation beat every augmented source; after 16 (0.97) heads sat at 0.96-1.00
with nothing left to gain; after 12 (0.84), augmentation helps fine-tuning by
3-4 points, the data the comparison needs. Pretrained on only the four shapes
the benchmark does not use (16 epochs), the features hardly transfer: heads
0.39-0.41 on four classes, every augmented source lower.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS_DIR, positive_int, setup_logging
from core.demo_data import SHAPES

logger = logging.getLogger(__name__)

PRETRAIN_SEED = 1234
"""The pretraining images' seed: the benchmarks draw their data with seeds 0 and 1."""


@dataclass(frozen=True)
class PretrainSettings:
    """What a pretrained file depends on; its name is derived from these."""

    size: int = 64
    per_class: int = 160
    epochs: int = 12
    learning_rate: float = 3e-4
    batch_size: int = 32
    seed: int = PRETRAIN_SEED
    shapes: tuple[str, ...] = SHAPES
    """The shapes it learns, one class each."""

    @property
    def stem(self) -> str:
        # All eight shapes keep the name files made before ``shapes`` existed had.
        named = "" if self.shapes == SHAPES else "-" + "+".join(self.shapes)
        return (
            f"vgg16-shapes-{self.size}px-{self.per_class}x{len(self.shapes)}-{self.epochs}ep"
            f"-lr{self.learning_rate:g}-b{self.batch_size}-s{self.seed}{named}"
        )

    def paths(self, directory: Path) -> tuple[Path, Path]:
        """The weights file and the JSON record beside it, in ``directory``."""
        return directory / f"{self.stem}.weights.h5", directory / f"{self.stem}.json"


def _shape_images(root: Path, settings: PretrainSettings) -> dict[str, tuple[Any, Any]]:
    """The settings' shapes in random colours: (preprocessed images, labels) per split."""
    from core.backbones import get_backbone
    from core.data import load_images, scan_dataset
    from core.demo_data import make_demo_data

    make_demo_data(
        root, shapes=settings.shapes, per_class=settings.per_class, size=settings.size,
        seed=settings.seed, class_hues=False,
    )  # fmt: skip
    preprocess = get_backbone("vgg16").preprocess_input()
    index = scan_dataset(root)
    splits = {}
    for split in ("train", "validation"):
        loaded = load_images(index.splits[split], settings.size)
        splits[split] = (preprocess(loaded.images.astype("float32")), loaded.labels)
    return splits


def unit_variance_init(model: Any, images: Any, rounds: int = 3) -> list[float]:
    """Scales each conv kernel in order until its output's std is 1 on ``images``.

    Biases are zeroed. Returns the standard deviation each conv layer's output
    had before its scaling (Keras' init), for the record.
    """
    import keras

    before = []
    hidden = np.asarray(images)
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, np.zeros_like(bias)])
            before.append(float(np.asarray(layer(hidden)).std()))
            for _ in range(rounds):
                kernel = kernel / float(np.asarray(layer(hidden)).std())
                layer.set_weights([kernel, np.zeros_like(bias)])
        hidden = np.asarray(layer(hidden))
    return before


def pretrain(settings: PretrainSettings, directory: Path) -> dict[str, Any]:
    """Writes the weights file and its record in ``directory``; returns the record."""
    import keras

    from core.backbones import build_backbone

    started = time.perf_counter()
    keras.utils.set_random_seed(settings.seed)
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as temp:
        splits = _shape_images(Path(temp) / "shapes", settings)
    (x, y), (x_val, y_val) = splits["train"], splits["validation"]
    backbone = build_backbone("vgg16", "none", settings.size, seed=settings.seed)
    keras_init_std = unit_variance_init(backbone, x[: 8 * 16])
    inputs = keras.Input((settings.size, settings.size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    classes = int(y.max()) + 1
    model = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(pooled))
    model.compile(
        keras.optimizers.Adam(settings.learning_rate),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(
        x, y, batch_size=settings.batch_size, epochs=settings.epochs,
        validation_data=(x_val, y_val), verbose=2,
    )  # fmt: skip
    out, record_path = settings.paths(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.weights.h5")
    backbone.save_weights(partial)
    partial.replace(out)
    record = {
        "settings": {**asdict(settings), "shapes": list(settings.shapes)},  # as JSON has it
        "train_images": len(y),
        "validation_images": len(y_val),
        "keras_init_conv_output_std": keras_init_std,
        "val_accuracy_by_epoch": [float(v) for v in history.history["val_accuracy"]],
        "seconds": time.perf_counter() - started,
    }
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    logger.info(
        "pretrained %s in %.0f s: validation accuracy %.3f on %d shapes",
        out, record["seconds"], record["val_accuracy_by_epoch"][-1], len(settings.shapes),
    )  # fmt: skip
    return record


def ensure_pretrained(
    settings: PretrainSettings, directory: Path = RESULTS_DIR
) -> tuple[Path, dict[str, Any]]:
    """The weights file for ``settings`` in ``directory``, pretrained unless it exists."""
    path, record_path = settings.paths(directory)
    if path.is_file() and record_path.is_file():
        logger.info("reusing pretrained weights %s", path)
        return path, json.loads(record_path.read_text())
    return path, pretrain(settings, directory)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = PretrainSettings()
    parser = argparse.ArgumentParser(
        prog="python -m bench.pretrained",
        description="Pretrain VGG16 on synthetic shapes: a local stand-in for ImageNet weights.",
    )
    parser.add_argument("--size", type=positive_int, default=defaults.size)
    parser.add_argument("--per-class", type=positive_int, default=defaults.per_class)
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument(
        "--shapes", nargs="+", choices=SHAPES, default=list(defaults.shapes), help="classes"
    )
    parser.add_argument("--dir", type=Path, default=RESULTS_DIR, help="where the file goes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from core.runtime import configure_tensorflow

    configure_tensorflow(None)
    settings = PretrainSettings(
        size=args.size, per_class=args.per_class, epochs=args.epochs,
        learning_rate=args.learning_rate, shapes=tuple(args.shapes),
    )  # fmt: skip
    path, record = ensure_pretrained(settings, args.dir)
    accuracy = record["val_accuracy_by_epoch"][-1]
    print(f"{path}: validation accuracy {accuracy:.3f} on {', '.join(settings.shapes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
