"""The bottleneck-feature cache: computed once, stored on disk, reused by every trial.

An entry holds the output of one backbone layer (the "cut") for every training
and validation image of one dataset. Its key is the content of everything the
numbers depend on: backbone, weights identity, image size, dataset fingerprint
and cut. Entries are plain ``.npy`` files (loaded with ``allow_pickle=False``)
plus a ``meta.json``, written to a temporary folder and renamed into place, so a
reader never sees half an entry.

Layout::

    CACHE_DIR/
      entries/<backbone>-<size>px-<cut>-<digest>/
        meta.json
        train_features.npy  train_labels.npy
        validation_features.npy  validation_labels.npy
      builds.jsonl      one line per entry ever built (an audit of extractions)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.backbones import INPUT_CUT, get_backbone, weights_identity
from core.data import DatasetIndex, load_images

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CACHED_SPLITS = ("train", "validation")
IMAGES_CUT = "images"
"""Pseudo-cut for the decoded, resized uint8 images themselves (used by augmented trials)."""


class FeatureCacheError(ValueError):
    """A cache entry is unreadable or does not match its key (the message names it)."""


@dataclass(frozen=True)
class FeatureKey:
    """Everything a cache entry's numbers depend on."""

    backbone: str
    weights: str
    image_size: int
    dataset: str
    cut: str

    def digest(self) -> str:
        payload = json.dumps(
            {
                "format": FORMAT_VERSION,
                "backbone": self.backbone,
                "weights": self.weights,
                "image_size": self.image_size,
                "dataset": self.dataset,
                "cut": self.cut,
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    @property
    def name(self) -> str:
        return f"{self.backbone}-{self.image_size}px-{self.cut}-{self.digest()}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "weights": self.weights,
            "image_size": self.image_size,
            "dataset": self.dataset,
            "cut": self.cut,
        }


@dataclass
class FeatureBundle:
    """What a search hands to its trials: cached arrays for every cut it needs.

    Ray puts one bundle in the object store per search; numpy arrays come back
    in each trial zero-copy and read-only.

    Attributes:
        backbone: Registry name.
        image_size: Side of the input images.
        class_names: Class names, index = label.
        labels: Labels per split ("train", "validation").
        cuts: Features per cut name, then per split.
        images: Decoded uint8 images per split, present only when some trial
            may augment (augmentation runs on images, before the frozen layers).
    """

    backbone: str
    image_size: int
    class_names: tuple[str, ...]
    labels: dict[str, np.ndarray]
    cuts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    images: dict[str, np.ndarray] | None = None

    def features(self, cut: str, split: str) -> np.ndarray:
        try:
            return self.cuts[cut][split]
        except KeyError:
            raise FeatureCacheError(
                f"no cached features for cut {cut!r}, split {split!r}; "
                f"the bundle holds cuts {sorted(self.cuts)}"
            ) from None

    @property
    def nbytes(self) -> int:
        total = sum(a.nbytes for a in self.labels.values())
        total += sum(a.nbytes for split in self.cuts.values() for a in split.values())
        if self.images:
            total += sum(a.nbytes for a in self.images.values())
        return total


@dataclass
class CacheStats:
    """Hits and misses of one ``FeatureCache`` instance, by entry name."""

    hits: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)


class FeatureCache:
    """Bottleneck features on disk, keyed by content.

    Args:
        root: The cache directory (created on first write).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.stats = CacheStats()

    @property
    def entries_dir(self) -> Path:
        return self.root / "entries"

    @property
    def builds_log(self) -> Path:
        return self.root / "builds.jsonl"

    def entry_dir(self, key: FeatureKey) -> Path:
        return self.entries_dir / key.name

    def has(self, key: FeatureKey) -> bool:
        return (self.entry_dir(key) / "meta.json").is_file()

    def builds(self) -> list[dict[str, Any]]:
        """Every build ever recorded in this cache, oldest first."""
        if not self.builds_log.is_file():
            return []
        lines = self.builds_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def load(self, key: FeatureKey) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Reads one entry.

        Returns:
            (features per split, labels per split).

        Raises:
            FeatureCacheError: naming the entry when it is missing, unreadable
                or was written for another key.
        """
        directory = self.entry_dir(key)
        try:
            meta = json.loads((directory / "meta.json").read_text())
        except (OSError, ValueError) as error:
            raise FeatureCacheError(f"cache entry {directory} is unreadable: {error}") from error
        if meta.get("key") != key.to_dict():
            raise FeatureCacheError(f"cache entry {directory} was written for another key")
        features: dict[str, np.ndarray] = {}
        labels: dict[str, np.ndarray] = {}
        for split in meta["splits"]:
            try:
                # Memory-mapped: the driver hands the arrays to Ray's object
                # store without holding a second full copy of them.
                features[split] = np.load(
                    directory / f"{split}_features.npy", mmap_mode="r", allow_pickle=False
                )
                labels[split] = np.load(directory / f"{split}_labels.npy", allow_pickle=False)
            except (OSError, ValueError) as error:
                raise FeatureCacheError(
                    f"cache entry {directory}, split {split!r} is unreadable: {error}"
                ) from error
        return features, labels

    def store(
        self,
        key: FeatureKey,
        features: dict[str, np.ndarray],
        labels: dict[str, np.ndarray],
        class_names: Sequence[str],
        seconds: float,
    ) -> Path:
        """Writes one entry atomically; an entry another process wrote first wins."""
        final = self.entry_dir(key)
        self.entries_dir.mkdir(parents=True, exist_ok=True)
        staging = self.entries_dir / f".tmp-{key.name}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            for split, array in features.items():
                np.save(staging / f"{split}_features.npy", np.ascontiguousarray(array))
                np.save(staging / f"{split}_labels.npy", labels[split].astype(np.int32))
            meta = {
                "key": key.to_dict(),
                "name": key.name,
                "splits": list(features),
                "shapes": {split: list(array.shape) for split, array in features.items()},
                "dtype": str(next(iter(features.values())).dtype),
                "class_names": list(class_names),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(seconds, 3),
            }
            (staging / "meta.json").write_text(json.dumps(meta, indent=2))
            if final.is_dir() and not self.has(key):
                # A folder without meta.json is not an entry (nothing renames
                # one into place unfinished); it is debris, e.g. removed by hand.
                logger.warning("replacing incomplete cache entry %s", final)
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.rename(staging, final)
            except OSError:
                if not self.has(key):
                    raise
                logger.info("cache entry %s was written by another process first", key.name)
                shutil.rmtree(staging, ignore_errors=True)
                return final
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        with self.builds_log.open("a") as log:
            log.write(
                json.dumps(
                    {
                        "name": key.name,
                        "cut": key.cut,
                        "created": meta["created"],
                        "pid": os.getpid(),
                        "seconds": meta["seconds"],
                    }
                )
                + "\n"
            )
        return final

    def ensure(
        self,
        index: DatasetIndex,
        *,
        backbone: str,
        weights: str,
        image_size: int,
        cuts: Iterable[str],
        include_images: bool = False,
        seed: int = 0,
        batch_size: int = 32,
        progress: bool = True,
    ) -> FeatureBundle:
        """Returns features for every cut, computing only the missing ones.

        All missing cuts are computed in one pass over the images (one forward
        pass yields every block's output).

        Args:
            index: The scanned dataset.
            backbone: Registry name.
            weights: "imagenet", "none" or a weights file path.
            image_size: Input side in pixels.
            cuts: Block-end layer names (or ``INPUT_CUT``) trials will start from.
            include_images: Also cache and return the resized uint8 images.
            seed: Random-init seed when ``weights`` is "none".
            batch_size: Images per forward pass.
            progress: Show a progress bar while computing.
        """
        get_backbone(backbone)  # an unknown name fails here, before any work
        weights_id = weights_identity(weights, seed)
        wanted = list(dict.fromkeys(cuts))
        keys = {
            cut: FeatureKey(backbone, weights_id, image_size, index.fingerprint, cut)
            for cut in wanted
        }
        if include_images:
            keys[IMAGES_CUT] = FeatureKey("-", "-", image_size, index.fingerprint, IMAGES_CUT)
        missing = [cut for cut, key in keys.items() if not self.has(key)]
        for cut, key in keys.items():
            (self.stats.misses if cut in missing else self.stats.hits).append(key.name)
        if missing:
            self._build(
                index, backbone, weights, image_size, seed, keys, missing, batch_size, progress
            )
        bundle = FeatureBundle(
            backbone=backbone, image_size=image_size, class_names=index.class_names, labels={}
        )
        for cut, key in keys.items():
            features, labels = self.load(key)
            if not bundle.labels:
                bundle.labels = labels
            elif any(not np.array_equal(bundle.labels[s], labels[s]) for s in labels):
                raise FeatureCacheError(
                    f"cache entry {self.entry_dir(key)} has labels that disagree with the "
                    "other entries of this dataset; remove it to rebuild"
                )
            if cut == IMAGES_CUT:
                bundle.images = features
            else:
                bundle.cuts[cut] = features
        return bundle

    def _build(
        self,
        index: DatasetIndex,
        backbone: str,
        weights: str,
        image_size: int,
        seed: int,
        keys: dict[str, FeatureKey],
        missing: list[str],
        batch_size: int,
        progress: bool,
    ) -> None:
        started = time.perf_counter()
        loaded = {
            split: load_images(index.splits[split], image_size, progress=progress)
            for split in CACHED_SPLITS
        }
        labels = {split: loaded[split].labels for split in CACHED_SPLITS}
        images = {split: loaded[split].images for split in CACHED_SPLITS}
        if IMAGES_CUT in missing:
            self.store(
                keys[IMAGES_CUT], images, labels, index.class_names, time.perf_counter() - started
            )
        layer_cuts = [cut for cut in missing if cut != IMAGES_CUT]
        if not layer_cuts:
            return
        computed = extract_features(
            images,
            backbone=backbone,
            weights=weights,
            image_size=image_size,
            seed=seed,
            cuts=layer_cuts,
            batch_size=batch_size,
            progress=progress,
        )
        seconds = time.perf_counter() - started
        for cut in layer_cuts:
            self.store(keys[cut], computed[cut], labels, index.class_names, seconds)
            logger.info("cached %s features for %s", cut, keys[cut].name)


def extract_features(
    images: dict[str, np.ndarray],
    *,
    backbone: str,
    weights: str,
    image_size: int,
    seed: int,
    cuts: Sequence[str],
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """Runs the frozen backbone once over ``images`` and keeps each cut's output.

    Args:
        images: uint8 images per split.
        cuts: Layer names (or ``INPUT_CUT`` for the preprocessed image).

    Returns:
        Features per cut, then per split (float32).
    """
    import keras
    from tqdm.auto import tqdm

    from core.backbones import build_backbone

    spec = get_backbone(backbone)
    preprocess = spec.preprocess_input()
    layer_cuts = [cut for cut in cuts if cut != INPUT_CUT]
    extractor = None
    if layer_cuts:
        model = build_backbone(backbone, weights, image_size, seed=seed)
        extractor = keras.Model(
            model.input,
            [model.get_layer(cut).output for cut in layer_cuts],
            name=f"{backbone}_cuts",
        )
    total = sum(len(array) for array in images.values())
    result: dict[str, dict[str, np.ndarray]] = {cut: {} for cut in cuts}
    with tqdm(
        total=total,
        desc=f"bottleneck features ({backbone}, {image_size}px)",
        unit="img",
        disable=not progress,
    ) as bar:
        for split, array in images.items():
            outputs: dict[str, list[np.ndarray]] = {cut: [] for cut in cuts}
            for start in range(0, len(array), batch_size):
                batch = preprocess(array[start : start + batch_size].astype("float32"))
                if INPUT_CUT in outputs:
                    outputs[INPUT_CUT].append(np.asarray(batch, dtype="float32"))
                if extractor is not None:
                    values = extractor(batch, training=False)
                    if not isinstance(values, (list, tuple)):
                        values = [values]
                    for cut, value in zip(layer_cuts, values, strict=True):
                        outputs[cut].append(keras.ops.convert_to_numpy(value))
                bar.update(min(batch_size, len(array) - start))
            for cut in cuts:
                result[cut][split] = np.concatenate(outputs[cut]).astype("float32", copy=False)
    keras.backend.clear_session()
    return result
