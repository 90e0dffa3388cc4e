"""A small synthetic image set in the Keras layout, for demos and tests.

Each class is one shape (circle, square, ...) drawn at a random position, size,
rotation and colour on a noisy background of a contrasting random colour, so a
small classifier can tell the classes apart while every image still differs.
Files alternate between PNG and JPEG so that both decoders are exercised.

The output is deterministic: the same arguments give byte-identical files.
"""

from __future__ import annotations

import colorsys
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "diamond",
    "star",
    "crescent",
)
"""Drawable shapes; class ``i`` of a demo set draws ``SHAPES[i]``."""

DEMO_SPLITS = ("train", "validation", "test")
MIN_IMAGE_SIZE = 32
_JPEG_QUALITY = 95
_NOISE_STD = 12.0


@dataclass(frozen=True)
class DemoDataSummary:
    """What ``make_demo_data`` wrote.

    Attributes:
        root: Absolute output directory.
        class_names: Class (shape) names, sorted as ``scan_dataset`` sorts them.
        counts: Number of images per split, over all classes.
    """

    root: Path
    class_names: tuple[str, ...]
    counts: dict[str, int]


def _split_sizes(per_class: int) -> dict[str, int]:
    return {
        "train": per_class,
        "validation": max(2, per_class // 2),
        "test": max(2, per_class // 4),
    }


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    in_range = (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= minimum
        and (maximum is None or value <= maximum)
    )
    if not in_range:
        bounds = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be an integer {bounds}, got {value!r}")


def _polygon(shape: str) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape on the unit scale, centred on the origin."""
    if shape == "square":
        return [(-0.72, -0.72), (0.72, -0.72), (0.72, 0.72), (-0.72, 0.72)]
    if shape == "triangle":
        return [
            (math.cos(math.radians(90 + 120 * k)), math.sin(math.radians(90 + 120 * k)))
            for k in range(3)
        ]
    if shape == "diamond":
        # Elongated, so that a rotated diamond is not a rotated square.
        return [(0.0, 1.0), (0.5, 0.0), (0.0, -1.0), (-0.5, 0.0)]
    if shape == "cross":
        arm, width = 1.0, 0.3
        return [
            (-width, -arm),
            (width, -arm),
            (width, -width),
            (arm, -width),
            (arm, width),
            (width, width),
            (width, arm),
            (-width, arm),
            (-width, width),
            (-arm, width),
            (-arm, -width),
            (-width, -width),
        ]
    if shape == "star":
        return [
            (
                (1.0 if k % 2 == 0 else 0.4) * math.cos(math.radians(90 + 36 * k)),
                (1.0 if k % 2 == 0 else 0.4) * math.sin(math.radians(90 + 36 * k)),
            )
            for k in range(10)
        ]
    raise ValueError(f"shape {shape!r} is not a polygon")


def _contrasting_colours(
    rng: np.random.Generator, hue: float | None = None
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A background and a foreground colour, one dark and one light.

    With ``hue`` (0-1), the foreground is a saturated colour near that hue on a
    dark background; otherwise both colours are random.
    """
    if hue is not None:
        jittered = (hue + float(rng.uniform(-0.04, 0.04))) % 1.0
        saturation = float(rng.uniform(0.6, 1.0))
        value = float(rng.uniform(0.75, 1.0))
        red, green, blue = colorsys.hsv_to_rgb(jittered, saturation, value)
        dark = tuple(int(v) for v in rng.integers(0, 70, size=3))
        return (dark[0], dark[1], dark[2]), (
            round(red * 255),
            round(green * 255),
            round(blue * 255),
        )
    dark = tuple(int(v) for v in rng.integers(0, 90, size=3))
    light = tuple(int(v) for v in rng.integers(165, 256, size=3))
    if rng.random() < 0.5:
        return (dark[0], dark[1], dark[2]), (light[0], light[1], light[2])
    return (light[0], light[1], light[2]), (dark[0], dark[1], dark[2])


def _narrowed(value: float, centre: float, variation: float) -> float:
    """``value`` drawn over a full range, pulled towards its ``centre`` (1: unchanged)."""
    return value if variation == 1.0 else centre + variation * (value - centre)


def draw_shape_image(
    shape: str,
    size: int,
    rng: np.random.Generator,
    hue: float | None = None,
    variation: float = 1.0,
) -> Image.Image:
    """Draw one demo image.

    Args:
        shape: One of ``SHAPES``.
        size: Image height and width in pixels.
        rng: Source of the position, size, rotation, colours and noise.
        hue: Foreground hue in [0, 1), or None for random colours.
        variation: Share (0-1) of the full range of position, size and rotation:
            0 draws every shape centred, upright and of middle size.

    Returns:
        An RGB image of ``size`` x ``size`` pixels.

    Raises:
        ValueError: If ``shape`` is not in ``SHAPES``.
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    background, foreground = _contrasting_colours(rng, hue)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)

    # The same draws whatever the variation, so that only the pose changes with it.
    radius = _narrowed(float(rng.uniform(0.22, 0.36)), 0.29, variation) * size
    margin = radius + 1.0
    centre_x = _narrowed(float(rng.uniform(margin, size - margin)), size / 2, variation)
    centre_y = _narrowed(float(rng.uniform(margin, size - margin)), size / 2, variation)
    angle = _narrowed(float(rng.uniform(0.0, 2.0 * math.pi)), math.pi, variation)

    if shape in ("circle", "ring", "crescent"):
        r = 0.85 * radius
        box = (centre_x - r, centre_y - r, centre_x + r, centre_y + r)
        if shape == "circle":
            draw.ellipse(box, fill=foreground)
        elif shape == "ring":
            draw.ellipse(box, outline=foreground, width=max(2, round(0.3 * r)))
        else:
            # A disc with an offset disc of background bitten out of it.
            draw.ellipse(box, fill=foreground)
            bite_x = centre_x + 0.45 * r * math.cos(angle)
            bite_y = centre_y + 0.45 * r * math.sin(angle)
            bite = 0.85 * r
            draw.ellipse(
                (bite_x - bite, bite_y - bite, bite_x + bite, bite_y + bite), fill=background
            )
    else:
        cos, sin = math.cos(angle), math.sin(angle)
        points = [
            (centre_x + radius * (x * cos - y * sin), centre_y + radius * (x * sin + y * cos))
            for x, y in _polygon(shape)
        ]
        draw.polygon(points, fill=foreground)

    pixels = np.asarray(image, dtype=np.float64)
    pixels = pixels + rng.normal(0.0, _NOISE_STD, size=pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _prepare_output(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"demo data output {root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"demo data output {root} exists and is not empty; "
                "pass overwrite=True (--overwrite on the command line) to replace its "
                "train/validation/test folders"
            )
        # Remove only what this function writes; anything else in root is the user's.
        for split in DEMO_SPLITS:
            target = root / split
            if target.is_symlink():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                raise FileExistsError(f"{target} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)


def _class_shapes(classes: int | None, shapes: Sequence[str] | None) -> tuple[str, ...]:
    """The shape of each class, from ``make_demo_data``'s ``classes`` and ``shapes``."""
    if shapes is None:
        classes = 2 if classes is None else classes
        _check_int("classes", classes, 2, len(SHAPES))
        return SHAPES[:classes]
    chosen = tuple(shapes)
    unknown = [shape for shape in chosen if shape not in SHAPES]
    if unknown or len(set(chosen)) != len(chosen) or len(chosen) < 2:
        raise ValueError(
            f"shapes must be at least 2 distinct names of {', '.join(SHAPES)}, got {shapes!r}"
        )
    if classes is not None and classes != len(chosen):
        raise ValueError(f"classes={classes!r} does not match the {len(chosen)} shapes {chosen}")
    return chosen


def make_demo_data(
    out: str | os.PathLike[str],
    *,
    classes: int | None = None,
    shapes: Sequence[str] | None = None,
    per_class: int = 40,
    size: int = 64,
    seed: int = 0,
    overwrite: bool = False,
    class_hues: bool = True,
    variation: float = 1.0,
) -> DemoDataSummary:
    """Write a synthetic shapes data set in the Keras layout.

    Writes ``out/train/<class>/``, ``out/validation/<class>/`` and
    ``out/test/<class>/`` with ``per_class``, ``max(2, per_class // 2)`` and
    ``max(2, per_class // 4)`` images per class. Class ``i`` is named and drawn as
    ``SHAPES[i]``, or as ``shapes[i]`` when ``shapes`` is given.

    Args:
        out: Output directory.
        classes: Number of classes, in ``[2, len(SHAPES)]``; 2 unless ``shapes``
            is given, ``len(shapes)`` when it is.
        shapes: The shapes to draw, one class each, instead of the first
            ``classes`` of ``SHAPES``: e.g. a backbone pretrained on the shapes a
            benchmark's data does not use.
        per_class: Training images per class, at least 2.
        size: Image height and width in pixels, at least 32.
        seed: Seed of everything random; the same arguments give identical files.
        overwrite: Replace the ``train``, ``validation`` and ``test`` folders of a
            non-empty ``out`` (nothing else in it is touched).
        class_hues: Draw each class's shapes in its own hue (with jitter) on a
            dark background. Without ImageNet weights (no network here) the demo
            and the tests use a random-init backbone, whose features carry
            colour far better than shape; the hue keeps the data learnable for
            it. False gives random colours, so only the shape tells classes apart.
        variation: Share (0-1) of the full range of the shapes' position, size
            and rotation. Below 1, a split covers less of the variation another
            split drawn at 1 shows: the gap that augmentation is there to fill.

    Returns:
        Where the data went, the class names and the number of images per split.

    Raises:
        ValueError: If an argument is out of range (names the argument and value).
        FileExistsError: If ``out`` is not empty and ``overwrite`` is False, or if
            ``out`` or one of its split paths is a file.
    """
    shapes = _class_shapes(classes, shapes)
    _check_int("per_class", per_class, 2)
    _check_int("size", size, MIN_IMAGE_SIZE)
    _check_int("seed", seed, 0)
    valid_number = isinstance(variation, int | float) and not isinstance(variation, bool)
    if not (valid_number and 0.0 <= variation <= 1.0):
        raise ValueError(f"variation must be a number in [0, 1], got {variation!r}")
    root = Path(out).expanduser().absolute()
    _prepare_output(root, overwrite)

    classes = len(shapes)
    sizes = _split_sizes(per_class)
    for split_index, split in enumerate(DEMO_SPLITS):
        for class_index, shape in enumerate(shapes):
            class_dir = root / split / shape
            class_dir.mkdir(parents=True, exist_ok=True)
            for image_index in range(sizes[split]):
                # One generator per image: an image does not change when another
                # split or class changes size.
                rng = np.random.default_rng((seed, split_index, class_index, image_index))
                hue = class_index / len(shapes) if class_hues else None
                image = draw_shape_image(shape, size, rng, hue, variation)
                stem = f"{shape}.{image_index:04d}"
                if image_index % 2 == 0:
                    image.save(class_dir / f"{stem}.png", format="PNG", optimize=False)
                else:
                    image.save(class_dir / f"{stem}.jpg", format="JPEG", quality=_JPEG_QUALITY)

    counts = {split: sizes[split] * classes for split in DEMO_SPLITS}
    logger.info(
        "Wrote demo data to %s: %d classes (%s), %s",
        root,
        classes,
        ", ".join(shapes),
        ", ".join(f"{split}={count}" for split, count in counts.items()),
    )
    return DemoDataSummary(root=root, class_names=tuple(sorted(shapes)), counts=counts)
