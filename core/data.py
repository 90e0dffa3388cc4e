"""Dataset discovery, fingerprinting and image loading.

Two on-disk layouts are understood:

``keras``
    ``DIR/train/<class>/...`` and ``DIR/validation/<class>/...``, optionally
    ``DIR/test/<class>/...``: the layout of the Keras "building powerful image
    classification models using very little data" recipe (2000 train and 800
    validation images of cats and dogs).

``folder``
    ``DIR/<class>/...``: every image of a class in one folder. Each class is split
    into train and validation by a seeded shuffle, so the split is reproducible.

The dataset fingerprint hashes the bytes of every image together with its split
and label, so anything derived from the images (cached bottleneck features) can
be keyed by it and is invalidated when any image changes.

This module needs only numpy and Pillow: it must stay importable without
TensorFlow, Keras or Ray.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
)
"""Lower-case file extensions treated as images; matching is case-insensitive."""

SPLITS = ("train", "validation", "test")

FINGERPRINT_VERSION = 1
_HASH_CHUNK_BYTES = 1 << 20
_WHITE = (255, 255, 255)

# What Pillow raises for a file that is not a decodable image. Anything else is a
# bug in this module and should not be silently counted as a bad image.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    struct.error,
    Image.DecompressionBombError,
)


class DataError(ValueError):
    """The dataset on disk is missing, malformed or unreadable.

    Every message names the offending path (and the class or split where relevant).
    """


@dataclass(frozen=True)
class ImageRecord:
    """One image file of a dataset.

    Attributes:
        path: Absolute path of the file.
        label: Index of the image's class in ``DatasetIndex.class_names``.
        relative: Path relative to the dataset root, in POSIX style.
    """

    path: Path
    label: int
    relative: str


@dataclass(frozen=True)
class DatasetIndex:
    """The images of a dataset, by split, and a fingerprint of their content.

    Attributes:
        root: Absolute dataset root.
        layout: ``"keras"`` or ``"folder"`` (see the module docstring).
        class_names: Sorted class names; a label is an index into this tuple.
        splits: ``"train"``, ``"validation"`` and, if present, ``"test"`` records,
            each sorted by relative path.
        fingerprint: SHA-256 hex digest over the layout, the class names and, for
            every record, its split, label, relative path and file content.
    """

    root: Path
    layout: str
    class_names: tuple[str, ...]
    # A plain dict rather than a read-only proxy so the index pickles (it is
    # shipped to tuning workers); excluded from the hash because dicts are unhashable.
    splits: Mapping[str, tuple[ImageRecord, ...]] = field(hash=False)
    fingerprint: str

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def split_names(self) -> tuple[str, ...]:
        """Names of the splits present, in the order of ``SPLITS``."""
        return tuple(name for name in SPLITS if name in self.splits)


@dataclass
class LoadedImages:
    """Decoded images of a list of records, with the ones that could not be read.

    Attributes:
        images: ``uint8`` array of shape ``(N, size, size, 3)``.
        labels: ``int32`` array of shape ``(N,)``.
        paths: Relative paths of the loaded images, in the order of ``images``.
        skipped: ``(relative path, reason)`` of every unreadable image.
    """

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names a visible file with an image extension.

    Args:
        path: Path to test.

    Returns:
        True for a regular (or symlinked) file whose name does not start with ``.``
        and whose extension is in ``IMAGE_EXTENSIONS`` (case-insensitive).
    """
    return (
        not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )


def scan_dataset(
    root: str | os.PathLike[str], validation_fraction: float = 0.2, seed: int = 0
) -> DatasetIndex:
    """Find the classes and images of a dataset and fingerprint them.

    If ``root/train`` exists the dataset is in Keras layout and ``root/validation``
    must exist too (``root/test`` is optional). Otherwise the subfolders of ``root``
    are the classes and each class is split into train and validation.

    Args:
        root: Dataset directory.
        validation_fraction: Folder layout only: fraction of each class held out
            for validation, in (0, 1). At least one image per class goes to each
            split.
        seed: Folder layout only: seed of the shuffle that assigns the split.

    Returns:
        The dataset index, with every record's file hashed into the fingerprint.

    Raises:
        DataError: If the root is missing or not a directory, the layout is
            incomplete, there are fewer than two classes, a class folder has no
            images, the class names differ between splits, a folder-layout class
            has fewer than two images, or ``validation_fraction`` is not in (0, 1).
    """
    if (
        isinstance(validation_fraction, bool)
        or not isinstance(validation_fraction, (int, float))
        or not 0.0 < validation_fraction < 1.0
    ):
        raise DataError(
            f"validation_fraction must be in (0, 1), got {validation_fraction!r} (dataset {root})"
        )
    root_path = Path(root).expanduser().absolute()
    if not root_path.exists():
        raise DataError(f"dataset directory {root_path} does not exist")
    if not root_path.is_dir():
        raise DataError(f"dataset path {root_path} is not a directory")

    if (root_path / "train").exists():
        layout = "keras"
        class_names, splits = _scan_keras_layout(root_path)
    else:
        for split in ("validation", "test"):
            if (root_path / split).exists():
                raise DataError(
                    f"{root_path / split} exists but {root_path / 'train'} does not: "
                    "a Keras-layout dataset needs train/ and validation/ folders"
                )
        layout = "folder"
        class_names, splits = _scan_folder_layout(root_path, validation_fraction, seed)

    fingerprint = _fingerprint(layout, class_names, splits)
    logger.debug(
        "Scanned %s (%s layout): %d classes, %s",
        root_path,
        layout,
        len(class_names),
        ", ".join(f"{name}={len(records)}" for name, records in splits.items()),
    )
    return DatasetIndex(
        root=root_path,
        layout=layout,
        class_names=class_names,
        splits=splits,
        fingerprint=fingerprint,
    )


def _class_folders(directory: Path) -> dict[str, Path]:
    """The visible immediate subdirectories of ``directory``, by name."""
    return {
        entry.name: entry
        for entry in sorted(directory.iterdir())
        if entry.is_dir() and not entry.name.startswith(".")
    }


def _image_files(class_dir: Path) -> list[Path]:
    """All image files under ``class_dir`` (recursively, skipping hidden folders)."""
    found: list[Path] = []
    for current, subdirs, files in os.walk(class_dir):
        subdirs[:] = sorted(name for name in subdirs if not name.startswith("."))
        found.extend(
            path for path in (Path(current) / name for name in files) if is_image_file(path)
        )
    return found


def _require_classes(directory: Path, folders: Mapping[str, Path]) -> None:
    if len(folders) < 2:
        raise DataError(
            f"found {len(folders)} class folder(s) in {directory}"
            f"{' (' + ', '.join(folders) + ')' if folders else ''}; "
            "need at least two, one subfolder per class"
        )


def _scan_class(class_dir: Path) -> list[Path]:
    files = _image_files(class_dir)
    if not files:
        raise DataError(
            f"class folder {class_dir} contains no image files "
            f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return files


def _records(root: Path, files: Iterable[Path], label: int) -> list[ImageRecord]:
    return [
        ImageRecord(path=path, label=label, relative=path.relative_to(root).as_posix())
        for path in files
    ]


def _scan_keras_layout(
    root: Path,
) -> tuple[tuple[str, ...], dict[str, tuple[ImageRecord, ...]]]:
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"{train_dir} is not a directory")
    validation_dir = root / "validation"
    if not validation_dir.exists():
        raise DataError(
            f"{train_dir} exists but {validation_dir} is missing: a Keras-layout "
            "dataset needs both train/ and validation/ (test/ is optional)"
        )
    split_dirs = {"train": train_dir, "validation": validation_dir}
    test_dir = root / "test"
    if test_dir.exists():
        split_dirs["test"] = test_dir

    folders_by_split: dict[str, dict[str, Path]] = {}
    for split, split_dir in split_dirs.items():
        if not split_dir.is_dir():
            raise DataError(f"{split} split path {split_dir} is not a directory")
        folders = _class_folders(split_dir)
        _require_classes(split_dir, folders)
        folders_by_split[split] = folders

    train_classes = set(folders_by_split["train"])
    for split, folders in folders_by_split.items():
        if set(folders) != train_classes:
            only_train = sorted(train_classes - set(folders))
            only_here = sorted(set(folders) - train_classes)
            raise DataError(
                f"class folders differ between train ({train_dir}) and {split} "
                f"({split_dirs[split]}): only in train: {only_train or 'none'}; "
                f"only in {split}: {only_here or 'none'}"
            )

    class_names = tuple(sorted(train_classes))
    splits: dict[str, tuple[ImageRecord, ...]] = {}
    for split, folders in folders_by_split.items():
        records: list[ImageRecord] = []
        for label, name in enumerate(class_names):
            records.extend(_records(root, _scan_class(folders[name]), label))
        splits[split] = tuple(sorted(records, key=lambda record: record.relative))
    return class_names, splits


def _scan_folder_layout(
    root: Path, validation_fraction: float, seed: int
) -> tuple[tuple[str, ...], dict[str, tuple[ImageRecord, ...]]]:
    folders = _class_folders(root)
    _require_classes(root, folders)
    class_names = tuple(sorted(folders))
    rng = np.random.default_rng(seed)
    train: list[ImageRecord] = []
    validation: list[ImageRecord] = []
    for label, name in enumerate(class_names):
        records = sorted(
            _records(root, _scan_class(folders[name]), label),
            key=lambda record: record.relative,
        )
        count = len(records)
        if count < 2:
            raise DataError(
                f"class {name!r} ({folders[name]}) has {count} image; need at least 2 "
                "to put one in each of train and validation"
            )
        validation_count = min(count - 1, max(1, round(validation_fraction * count)))
        order = rng.permutation(count)
        validation.extend(records[i] for i in order[:validation_count])
        train.extend(records[i] for i in order[validation_count:])
    splits = {
        "train": tuple(sorted(train, key=lambda record: record.relative)),
        "validation": tuple(sorted(validation, key=lambda record: record.relative)),
    }
    return class_names, splits


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK_BYTES):
                digest.update(chunk)
    except OSError as error:
        raise DataError(f"cannot read {path} to fingerprint the dataset: {error}") from error
    return digest.hexdigest()


def _fingerprint(
    layout: str,
    class_names: Sequence[str],
    splits: Mapping[str, Sequence[ImageRecord]],
) -> str:
    # JSON lines keep the fields unambiguous (no separator can be forged by a file name).
    digest = hashlib.sha256()
    header = {"version": FINGERPRINT_VERSION, "layout": layout, "classes": list(class_names)}
    digest.update(json.dumps(header, sort_keys=True).encode() + b"\n")
    for split in SPLITS:
        for record in splits.get(split, ()):
            line = [split, record.label, record.relative, _file_sha256(record.path)]
            digest.update(json.dumps(line).encode() + b"\n")
    return digest.hexdigest()


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency onto white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "F") or mode.startswith("I;16"):
        image = _high_depth_to_luminance(image)
        mode = image.mode
    has_alpha = (
        mode in ("RGBA", "LA", "PA", "La", "RGBa")
        or (mode in ("P", "L", "RGB") and "transparency" in image.info)
        or (mode == "P" and image.palette is not None and image.palette.mode == "RGBA")
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_luminance(image: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit integer or float grey image to 8 bits.

    Pillow's own conversion clips these to 255 instead of scaling them, which turns
    an ordinary 16-bit PNG white.
    """
    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) > 255):
        values = values / 257.0
    elif image.mode == "F" and values.max(initial=0) <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _decode(path: Path, image_size: int) -> np.ndarray:
    """Decode, convert and resize one image; raises one of ``_DECODE_ERRORS``."""
    with Image.open(path) as image:
        image.load()
        rgb = _to_rgb(image)
        if rgb.size != (image_size, image_size):
            rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def _check_image_size(image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def load_image(path: str | os.PathLike[str], image_size: int) -> np.ndarray:
    """Decode one image file as RGB and resize it to a square.

    Args:
        path: Image file.
        image_size: Output height and width in pixels.

    Returns:
        ``uint8`` array of shape ``(image_size, image_size, 3)``.

    Raises:
        DataError: If the file is missing or cannot be decoded (names the path).
        ValueError: If ``image_size`` is not a positive integer.
    """
    _check_image_size(image_size)
    image_path = Path(path)
    try:
        return _decode(image_path, image_size)
    except _DECODE_ERRORS as error:
        raise DataError(f"cannot read image {image_path}: {_describe(error)}") from error


def load_images(
    records: Sequence[ImageRecord],
    image_size: int,
    *,
    progress: bool = False,
    summarize: bool = True,
) -> LoadedImages:
    """Decode images as RGB, resized to ``image_size`` x ``image_size``.

    Unreadable files are skipped with a warning naming each one and are listed in
    ``LoadedImages.skipped``; one more warning at the end gives their count.

    Args:
        records: Images to load, e.g. ``index.splits["train"]``.
        image_size: Output height and width in pixels.
        progress: Show a progress bar on stderr.
        summarize: Warn with the count of skipped images and fail when none could
            be read (off when the records are one batch of a larger set).

    Returns:
        The decoded images and their labels, in the order of ``records`` minus the
        skipped ones.

    Raises:
        DataError: If every record is unreadable.
        ValueError: If ``image_size`` is not a positive integer.
    """
    _check_image_size(image_size)
    total = len(records)
    images = np.empty((total, image_size, image_size, 3), dtype=np.uint8)
    labels = np.empty((total,), dtype=np.int32)
    paths: list[str] = []
    skipped: list[tuple[str, str]] = []
    first_unreadable: Path | None = None

    iterable: Iterable[ImageRecord] = records
    if progress:
        from tqdm.auto import tqdm

        iterable = tqdm(records, desc="Loading images", unit="img", file=sys.stderr)

    count = 0
    for record in iterable:
        try:
            images[count] = _decode(record.path, image_size)
        except _DECODE_ERRORS as error:
            reason = _describe(error)
            logger.warning("Skipping unreadable image %s: %s", record.path, reason)
            skipped.append((record.relative, reason))
            first_unreadable = first_unreadable or record.path
            continue
        labels[count] = record.label
        paths.append(record.relative)
        count += 1

    if skipped and summarize:
        logger.warning("Skipped %d of %d images that could not be read", len(skipped), total)
    if total and not count and summarize:
        raise DataError(
            f"none of the {total} images could be read; the first, {first_unreadable}, "
            f"failed with {skipped[0][1]}"
        )
    if count < total:
        # Copy so the rows of the skipped images do not keep the whole buffer alive.
        images = images[:count].copy()
        labels = labels[:count].copy()
    return LoadedImages(images=images, labels=labels, paths=paths, skipped=skipped)


def iter_image_batches(
    records: Sequence[ImageRecord],
    image_size: int,
    batch_size: int,
    *,
    workers: int = 2,
    prefetch: int = 2,
) -> Iterator[LoadedImages]:
    """Decodes images batch by batch in background threads, a few batches ahead.

    A consumer that runs a model on each batch then overlaps decoding and
    resizing (Pillow releases the GIL) with the model. Unreadable files are
    skipped and counted as in ``load_images``; each batch's ``skipped`` lists
    its own.

    Args:
        records: Images to load, in order.
        image_size: Output height and width in pixels.
        batch_size: Records per batch (a batch may come out smaller by its skips).
        workers: Decoding threads.
        prefetch: Batches decoded ahead of the consumer.

    Raises:
        DataError: After the last batch, if every record was unreadable.
    """
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    _check_image_size(image_size)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be >= 1")
    chunks = [records[start : start + batch_size] for start in range(0, len(records), batch_size)]
    skipped_total: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        pending: deque[Future[LoadedImages]] = deque()
        upcoming = iter(chunks)
        for chunk in upcoming:
            pending.append(pool.submit(load_images, chunk, image_size, summarize=False))
            if len(pending) > prefetch:
                break
        while pending:
            batch = pending.popleft().result()
            for chunk in upcoming:  # refill the window before handing the batch out
                pending.append(pool.submit(load_images, chunk, image_size, summarize=False))
                break
            skipped_total.extend(batch.skipped)
            yield batch
    if skipped_total:
        logger.warning(
            "Skipped %d of %d images that could not be read", len(skipped_total), len(records)
        )
    if records and len(skipped_total) == len(records):
        raise DataError(
            f"none of the {len(records)} images could be read; the first failed with "
            f"{skipped_total[0][1]}"
        )
