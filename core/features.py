"""The bottleneck-feature cache: computed once, stored on disk, reused by every trial.

An entry holds the output of one backbone layer (the "cut") for the training
and validation images of one dataset. Its key is the content of everything the
numbers depend on: backbone, weights identity, image size, dataset fingerprint,
cut and storage dtype.

Augmented views: for an augmentation strength s > 0, the backbone also runs on
V augmented copies ("views") of each training image, each view computed once
with its own seed and cached as an entry of its own. A trial with strength s
draws one view per image each epoch, so even an augmented trial never runs the
frozen layers. Validation features are never augmented.

Entries are plain ``.npy`` files (loaded with ``allow_pickle=False``) plus a
``meta.json`` with every file's sha256, kept by ``core.cache_store.EntryStore``:
written to a staging folder and renamed into place (a reader never sees half
an entry), locked per entry so that concurrent builders build once, verified
on read and rebuilt with a warning when a file is truncated or altered. The
cache can live in a local directory or at a URI (s3://, gs://, ...).

Layout::

    CACHE_DIR/
      entries/<backbone>-<size>px-<cut>[-aug<s>-view<v>]-<dtype>-<digest>/
        meta.json
        train_features.npy  train_labels.npy
        validation_features.npy  validation_labels.npy   (not in views)
      locks/<entry>.lock
      builds.jsonl      one line per entry built here (an audit of extractions)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.backbones import INPUT_CUT, get_backbone, weights_identity
from core.cache_store import CacheStoreError, CorruptEntryError, EntryStore
from core.data import DatasetIndex, LoadedImages, iter_image_batches

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
CACHED_SPLITS = ("train", "validation")
FEATURE_DTYPES = ("float16", "float32")
DEFAULT_VIEWS = 8
"""Augmented views per training image and strength, unless configured otherwise."""
VIEW_CHUNK = 32
"""Images augmented per call when a view is built (part of what makes a view reproducible)."""
FLOAT16_MAX = float(np.finfo(np.float16).max)


class FeatureCacheError(ValueError):
    """A cache entry is unreadable or does not match its key (the message names it)."""


@dataclass(frozen=True)
class FeatureKey:
    """Everything a cache entry's numbers depend on.

    Attributes:
        backbone: Registry name.
        weights: Weights identity (``core.backbones.weights_identity``).
        image_size: Input side in pixels.
        dataset: Dataset fingerprint.
        cut: Layer name whose output is stored (or ``INPUT_CUT``).
        dtype: Storage dtype, "float16" or "float32".
        augmentation: Strength of an augmented view (0 for plain features).
        view: Seed of an augmented view, None for plain features.
    """

    backbone: str
    weights: str
    image_size: int
    dataset: str
    cut: str
    dtype: str = "float32"
    augmentation: float = 0.0
    view: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in FEATURE_DTYPES:
            raise FeatureCacheError(
                f"feature dtype {self.dtype!r}: choose one of {', '.join(FEATURE_DTYPES)}"
            )
        if (self.view is None) != (self.augmentation == 0):
            raise FeatureCacheError(
                f"augmentation={self.augmentation!r}, view={self.view!r}: a view needs a "
                "strength above 0 and plain features have none"
            )

    @property
    def is_view(self) -> bool:
        return self.view is not None

    @property
    def splits(self) -> tuple[str, ...]:
        """Views hold training images only: validation is never augmented."""
        return ("train",) if self.is_view else CACHED_SPLITS

    def digest(self) -> str:
        payload = json.dumps({"format": FORMAT_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    @property
    def name(self) -> str:
        view = f"-aug{self.augmentation:g}-view{self.view}" if self.is_view else ""
        return f"{self.backbone}-{self.image_size}px-{self.cut}{view}-{self.dtype}-{self.digest()}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "weights": self.weights,
            "image_size": self.image_size,
            "dataset": self.dataset,
            "cut": self.cut,
            "dtype": self.dtype,
            "augmentation": self.augmentation,
            "view": self.view,
        }


def is_uri(location: str | os.PathLike[str]) -> bool:
    """Whether a cache location is a URI (remote storage) rather than a local path."""
    return isinstance(location, str) and "://" in location


def view_name(cut: str, augmentation: float) -> str:
    """How a bundle names the views of one cut at one strength (exact: no two strengths collide)."""
    return f"{cut}@{float(augmentation)!r}"


@dataclass(frozen=True)
class FeatureRequest:
    """Which cache entries a search or a final training needs, and how to build them.

    Built once from a configuration (``tuning.config.FeatureSettings.request``)
    and handed to ``FeatureCache.ensure``, ``FeatureCache.keys_for`` and the
    cluster's feature builder alike.

    Attributes:
        backbone: Registry name.
        weights: "imagenet", "none" or a weights file path.
        image_size: Input side in pixels.
        cuts: Block-end layer names (or ``INPUT_CUT``) trials start from.
        augmentations: Strengths above 0 that get augmented views at every cut.
        views: Augmented views per strength.
        view_cuts: The cuts that get augmented views (None: every cut); at the
            others, augmented trials augment fresh images every epoch (see
            ``core.plan``).
        dtype: Storage dtype, "float16" (half the memory) or "float32".
        seed: Random-init seed when ``weights`` is "none".
        extraction_batch_size: Images per forward pass while building; not part
            of any entry's identity.
    """

    backbone: str
    weights: str
    image_size: int
    cuts: tuple[str, ...]
    augmentations: tuple[float, ...] = ()
    views: int = DEFAULT_VIEWS
    dtype: str = "float32"
    seed: int = 0
    extraction_batch_size: int = 32
    view_cuts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cuts", tuple(dict.fromkeys(self.cuts)))
        if self.view_cuts is not None:
            unknown = [cut for cut in self.view_cuts if cut not in self.cuts]
            if unknown:
                raise FeatureCacheError(
                    f"view_cuts {unknown}: not among the request's cuts {list(self.cuts)}"
                )
            object.__setattr__(self, "view_cuts", tuple(dict.fromkeys(self.view_cuts)))
        strengths = tuple(sorted({float(s) for s in self.augmentations if s > 0}))
        object.__setattr__(self, "augmentations", strengths)
        if strengths and self.views < 1:
            raise FeatureCacheError(f"views={self.views!r}: augmented trials need at least 1 view")
        if self.extraction_batch_size < 1:
            raise FeatureCacheError(
                f"extraction_batch_size={self.extraction_batch_size!r}: must be >= 1"
            )


@dataclass
class FeatureBundle:
    """What a search hands to its trials: cached arrays for every cut it needs.

    Ray puts one bundle in the object store per search; numpy arrays come back
    in each trial zero-copy and read-only, so trials on one node share one copy.

    Attributes:
        backbone: Registry name.
        image_size: Side of the input images.
        class_names: Class names, index = label.
        labels: Labels per split ("train", "validation").
        cuts: Features per cut name, then per split.
        views: Augmented training features per ``view_name(cut, strength)``:
            one array per view, each aligned with ``labels["train"]``.
        images: Decoded images per split, uint8 of shape (n, size, size, 3)
            aligned with ``labels``: an augmented trial whose (cut, strength)
            has no views augments ``images["train"]`` afresh every epoch and
            runs the frozen layers on them (``core.training``).
    """

    backbone: str
    image_size: int
    class_names: tuple[str, ...]
    labels: dict[str, np.ndarray]
    cuts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    views: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)

    def features(self, cut: str, split: str) -> np.ndarray:
        try:
            return self.cuts[cut][split]
        except KeyError:
            raise FeatureCacheError(
                f"no cached features for cut {cut!r}, split {split!r}; "
                f"the bundle holds cuts {sorted(self.cuts)}"
            ) from None

    def views_of(self, cut: str, augmentation: float) -> tuple[np.ndarray, ...]:
        """The augmented views of the training images at one cut and strength."""
        try:
            return self.views[view_name(cut, augmentation)]
        except KeyError:
            raise FeatureCacheError(
                f"no cached views for cut {cut!r} at augmentation={augmentation:g}; the bundle "
                f"holds {sorted(self.views) or 'no views'} (augmentation strengths must be "
                "among the levels the features were prepared for)"
            ) from None

    @property
    def nbytes(self) -> int:
        total = sum(a.nbytes for a in self.labels.values())
        total += sum(a.nbytes for split in self.cuts.values() for a in split.values())
        total += sum(a.nbytes for views in self.views.values() for a in views)
        total += sum(a.nbytes for a in self.images.values())
        return total


@dataclass
class CacheStats:
    """Hits and misses of one ``FeatureCache`` instance, by entry name."""

    hits: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)


class FeatureCache:
    """Bottleneck features in an ``EntryStore``, keyed by content.

    Entries carry sha256 checksums: a truncated or altered file is detected
    when the entry is read, and the entry rebuilt with a warning. Processes that
    need the same missing entry at once build it once: the first takes the
    entry's lock and builds, the others wait and then read it.

    Args:
        root: The cache directory, or a URI (``s3://``, ``gs://``, any
            ``pyarrow.fs`` URI) so that a new cluster reuses an earlier one's
            features; remote entries are mirrored locally to be memory-mapped.
        mirror_dir: The local mirror of a remote cache (default under
            ``~/.cache/bottletune/mirror``).
    """

    def __init__(
        self, root: str | os.PathLike[str], *, mirror_dir: str | os.PathLike[str] | None = None
    ) -> None:
        self.store = EntryStore(
            root if is_uri(root) else Path(os.fspath(root)).expanduser(), mirror_dir=mirror_dir
        )
        self.root = self.store.local_root
        self.stats = CacheStats()

    @property
    def entries_dir(self) -> Path:
        return self.store.entries_dir

    @property
    def builds_log(self) -> Path:
        return self.root / "builds.jsonl"

    def entry_dir(self, key: FeatureKey) -> Path:
        return self.store.entry_dir(key.name)

    def has(self, key: FeatureKey) -> bool:
        return self.store.has(key.name)

    def builds(self) -> list[dict[str, Any]]:
        """Every build this machine recorded in this cache, oldest first."""
        if not self.builds_log.is_file():
            return []
        lines = self.builds_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def load(self, key: FeatureKey) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Reads one entry, memory-mapped, after checking every file's checksum.

        Returns:
            (features per split, labels per split).

        Raises:
            CorruptEntryError: naming the file that is truncated or altered.
            FeatureCacheError: naming the entry when it is missing, unreadable
                or was written for another key.
        """
        try:
            meta, arrays = self.store.read(key.name)
        except CorruptEntryError:
            raise
        except CacheStoreError as error:
            raise FeatureCacheError(str(error)) from error
        where = self.entry_dir(key)
        if meta.get("key") != key.to_dict():
            raise FeatureCacheError(f"cache entry {where} was written for another key")
        features: dict[str, np.ndarray] = {}
        labels: dict[str, np.ndarray] = {}
        for split in meta.get("splits", []):
            try:
                # Memory-mapped: the driver hands the arrays to Ray's object
                # store without holding a second full copy of them.
                features[split] = arrays[f"{split}_features"]
                labels[split] = np.asarray(arrays[f"{split}_labels"])
            except KeyError as error:
                raise FeatureCacheError(
                    f"cache entry {where}, split {split!r} has no {error.args[0]}.npy"
                ) from None
        return features, labels

    def store_entry(
        self,
        key: FeatureKey,
        features: dict[str, np.ndarray],
        labels: dict[str, np.ndarray],
        class_names: Sequence[str],
        seconds: float,
    ) -> Path:
        """Writes one entry atomically, as ``key.dtype``, and records the build."""
        arrays: dict[str, np.ndarray] = {}
        for split, array in features.items():
            _check_representable(array, key, split)
            arrays[f"{split}_features"] = np.ascontiguousarray(array, dtype=key.dtype)
            arrays[f"{split}_labels"] = labels[split].astype(np.int32)
        created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        meta = {
            "key": key.to_dict(),
            "name": key.name,
            "splits": list(features),
            "shapes": {split: list(array.shape) for split, array in features.items()},
            "dtype": key.dtype,
            "class_names": list(class_names),
            "created": created,
            "seconds": round(seconds, 3),
        }
        final = self.store.write(key.name, arrays, meta)
        self.root.mkdir(parents=True, exist_ok=True)
        with self.builds_log.open("a") as log:
            record = {
                "name": key.name,
                "cut": key.cut,
                "augmentation": key.augmentation,
                "view": key.view,
                "created": created,
                "pid": os.getpid(),
                "seconds": meta["seconds"],
            }
            log.write(json.dumps(record) + "\n")
        return final

    def keys_for(self, index: DatasetIndex, request: FeatureRequest) -> list[FeatureKey]:
        """Every entry ``ensure`` needs for ``request``: plain cuts first, then views."""
        get_backbone(request.backbone)  # an unknown name fails here, before any work
        weights_id = weights_identity(request.weights, request.seed)

        def key(cut: str, augmentation: float = 0.0, view: int | None = None) -> FeatureKey:
            return FeatureKey(
                request.backbone,
                weights_id,
                request.image_size,
                index.fingerprint,
                cut,
                request.dtype,
                augmentation,
                view,
            )

        keys = [key(cut) for cut in request.cuts]
        view_cuts = request.cuts if request.view_cuts is None else request.view_cuts
        keys += [
            key(cut, s, v)
            for s in request.augmentations
            for v in range(request.views)
            for cut in view_cuts
        ]
        return keys

    def missing(self, index: DatasetIndex, request: FeatureRequest) -> list[FeatureKey]:
        """The entries of ``request`` not in the cache yet."""
        return [key for key in self.keys_for(index, request) if not self.has(key)]

    def ensure(
        self,
        index: DatasetIndex,
        request: FeatureRequest,
        *,
        progress: bool = True,
        images: Mapping[str, LoadedImages] | None = None,
        plain: bool = True,
    ) -> FeatureBundle:
        """Returns features for every cut (and views), computing only the missing ones.

        One forward pass over the images yields every cut's output; each missing
        augmented view is one more pass over the training images.

        Args:
            index: The scanned dataset.
            request: Which entries, and how to build missing ones.
            progress: Show a progress bar while computing.
            images: The decoded training and validation images, when the caller
                has them (e.g. sent by the driver to a Ray actor on another node);
                otherwise they are decoded from disk, overlapped with the model.
            plain: False leaves the plain entries out: only the views (their
                labels are the training split's).
        """
        weights, seed, batch_size = request.weights, request.seed, request.extraction_batch_size
        backbone, image_size = request.backbone, request.image_size
        keys = [key for key in self.keys_for(index, request) if plain or key.is_view]
        missing = self._counted_missing(keys)
        if missing:
            self._build_locked(index, weights, seed, missing, batch_size, progress, images)
        bundle = FeatureBundle(
            backbone=backbone, image_size=image_size, class_names=index.class_names, labels={}
        )
        for key in keys:
            features, labels = self._load_or_rebuild(index, request, key, progress, images)
            if not bundle.labels:
                bundle.labels = labels
            elif any(not np.array_equal(bundle.labels[s], labels[s]) for s in labels):
                raise FeatureCacheError(
                    f"cache entry {self.entry_dir(key)} has labels that disagree with the "
                    "other entries of this dataset; remove it to rebuild"
                )
            if key.is_view:
                name = view_name(key.cut, key.augmentation)
                bundle.views[name] = (*bundle.views.get(name, ()), features["train"])
            else:
                bundle.cuts[key.cut] = features
        return bundle

    def plain_entries(
        self,
        index: DatasetIndex,
        request: FeatureRequest,
        *,
        progress: bool = True,
        images: Mapping[str, LoadedImages] | None = None,
    ) -> Iterator[tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """The plain entries one cut at a time, in ``request.cuts`` order: (cut, features, labels).

        What ``ensure`` returns without views, but each entry is handed on as
        soon as it is stored: the missing cuts come from one pass over the
        images, as in ``ensure``, and are then written one by one, so that the
        first cut (a search's top cut, a few MB) is out before the wide, early
        cuts (hundreds of MB) are written. The missing entries' locks are held
        until the generator is exhausted or closed.
        """
        keys = self.keys_for(index, replace(request, augmentations=()))
        missing = self._counted_missing(keys)
        with self._locked(missing) as built:
            outputs: dict[str, dict[str, list[np.ndarray]]] = {}
            labels: dict[str, np.ndarray] = {}
            seconds = 0.0
            if built:
                extractor, bar = self._extraction(
                    index, request.weights, request.seed, built, 0, progress
                )
                with extractor, bar:
                    _, labels, outputs, seconds = self._plain_pass(
                        index, extractor, built, request.extraction_batch_size, bar, images
                    )
            for key in keys:
                if key in built:  # joined only now: the first cut's store waits for no other
                    features = _joined(outputs.pop(key.cut))
                    self.store_entry(key, features, labels, index.class_names, seconds)
                    logger.info("cached %s features as %s", key.cut, key.name)
                if key in missing:  # this process holds its lock: read, never rebuilt here
                    features, read_labels = self.load(key)
                else:
                    features, read_labels = self._load_or_rebuild(
                        index, request, key, progress, images
                    )
                yield key.cut, features, read_labels

    def _load_or_rebuild(
        self,
        index: DatasetIndex,
        request: FeatureRequest,
        key: FeatureKey,
        progress: bool,
        images: Mapping[str, LoadedImages] | None,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """One entry's features and labels; an entry that fails its checksums is rebuilt."""
        try:
            return self.load(key)
        except CorruptEntryError:
            return self._rebuild_damaged(
                index, request.weights, request.seed, key, request.extraction_batch_size,
                progress, images,
            )  # fmt: skip

    def _rebuild_damaged(
        self,
        index: DatasetIndex,
        weights: str,
        seed: int,
        key: FeatureKey,
        batch_size: int,
        progress: bool,
        images: Mapping[str, LoadedImages] | None,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Rebuilds an entry that failed its checksums, under the entry's lock.

        Checked again once the lock is held: another process that found the same
        damage may have rebuilt the entry meanwhile, and its good copy must not
        be thrown away.
        """
        with self.store.lock(key.name):
            try:
                return self.load(key)
            except CorruptEntryError as error:
                logger.warning("%s: rebuilding cache entry %s", error, key.name)
            except FeatureCacheError:
                pass  # removed meanwhile: build it
            self.store.discard(key.name)
            self._build(index, weights, seed, [key], batch_size, progress, images)
        return self.load(key)

    def _build_locked(
        self,
        index: DatasetIndex,
        weights: str,
        seed: int,
        missing: list[FeatureKey],
        batch_size: int,
        progress: bool,
        images: Mapping[str, LoadedImages] | None = None,
    ) -> None:
        """Builds the missing entries while holding their locks (see ``_locked``)."""
        with self._locked(missing) as still_missing:
            if still_missing:
                self._build(index, weights, seed, still_missing, batch_size, progress, images)

    def _counted_missing(self, keys: Sequence[FeatureKey]) -> list[FeatureKey]:
        """The entries of ``keys`` not in the cache, each key counted as a hit or a miss."""
        missing = [key for key in keys if not self.has(key)]
        for key in keys:
            (self.stats.misses if key in missing else self.stats.hits).append(key.name)
        return missing

    @contextlib.contextmanager
    def _locked(self, missing: Sequence[FeatureKey]) -> Iterator[list[FeatureKey]]:
        """Holds the locks of ``missing`` (in name order: no deadlock); yields those still missing.

        Another process may have built some of them while this one waited for
        their locks: those are read, not built again.
        """
        with contextlib.ExitStack() as locks:
            if missing:  # staging folders of builds killed more than an hour ago are debris
                self.store.clean_staging()
            for key in sorted(missing, key=lambda k: k.name):
                locks.enter_context(self.store.lock(key.name))
            still_missing = [key for key in missing if not self.has(key)]
            if len(still_missing) < len(missing):
                logger.info(
                    "%d cache entries were built by another process meanwhile",
                    len(missing) - len(still_missing),
                )
            yield still_missing

    def _build(
        self,
        index: DatasetIndex,
        weights: str,
        seed: int,
        missing: list[FeatureKey],
        batch_size: int,
        progress: bool,
        decoded: Mapping[str, LoadedImages] | None = None,
    ) -> None:
        plain = [key for key in missing if not key.is_view]
        passes: dict[tuple[float, int], list[FeatureKey]] = {}
        for key in missing:
            if key.view is not None:
                passes.setdefault((key.augmentation, key.view), []).append(key)
        extractor, bar = self._extraction(index, weights, seed, missing, len(passes), progress)
        with extractor, bar:
            images, labels, outputs, seconds = self._plain_pass(
                index, extractor, plain, batch_size, bar, decoded, with_images=bool(passes)
            )
            for key in plain:
                features = _joined(outputs.pop(key.cut))
                self.store_entry(key, features, labels, index.class_names, seconds)
                logger.info("cached %s features as %s", key.cut, key.name)
            for (augmentation, view), keys in passes.items():
                started = time.perf_counter()
                view_outputs: dict[str, list[np.ndarray]] = {key.cut: [] for key in keys}
                augment = view_augmentation(augmentation, view)
                train = images["train"]
                # Fixed chunks, not batch_size: seeded Keras layers draw per
                # call, so a view's numbers must not depend on the batch size.
                for start in range(0, len(train), VIEW_CHUNK):
                    rows = train[start : start + VIEW_CHUNK]
                    outputs_of_view = extractor(rows, [key.cut for key in keys], augment=augment)
                    for cut, value in outputs_of_view.items():
                        view_outputs[cut].append(value)
                    bar.update(len(rows))
                seconds = time.perf_counter() - started
                for key in keys:
                    self.store_entry(
                        key,
                        {"train": np.concatenate(view_outputs[key.cut])},
                        {"train": labels["train"]},
                        index.class_names,
                        seconds,
                    )

    @staticmethod
    def _extraction(
        index: DatasetIndex,
        weights: str,
        seed: int,
        missing: Sequence[FeatureKey],
        view_passes: int,
        progress: bool,
    ) -> tuple[FeatureExtractor, Any]:
        """The extractor for ``missing`` and a progress bar over every image it will run."""
        from tqdm.auto import tqdm

        first = missing[0]
        extractor = FeatureExtractor(
            first.backbone,
            weights,
            first.image_size,
            seed=seed,
            cuts=list(dict.fromkeys(key.cut for key in missing)),
        )
        splits = CACHED_SPLITS if any(not key.is_view for key in missing) else ("train",)
        counts = {split: len(index.splits[split]) for split in splits}
        bar = tqdm(
            total=sum(counts.values()) + counts["train"] * view_passes,
            desc=f"bottleneck features ({first.backbone}, {first.image_size}px)",
            unit="img",
            disable=not progress,
        )
        return extractor, bar

    @staticmethod
    def _plain_pass(
        index: DatasetIndex,
        extractor: FeatureExtractor,
        plain: Sequence[FeatureKey],
        batch_size: int,
        bar: Any,
        decoded: Mapping[str, LoadedImages] | None,
        *,
        with_images: bool = False,
    ) -> tuple[
        dict[str, np.ndarray], dict[str, np.ndarray], dict[str, dict[str, list[np.ndarray]]], float
    ]:
        """One pass over the images (the training split alone when ``plain`` is empty).

        Returns:
            The decoded images per split (only with ``with_images``: the views'
            passes run on them), the labels per split, ``{cut: {split: [batch
            features, ...]}}`` of the plain cuts (``_joined`` makes one array
            per split; joining the wide cuts is a copy of hundreds of MB, left
            to when each is stored), and the pass's seconds.
        """
        started = time.perf_counter()
        image_size = extractor.image_size
        images: dict[str, np.ndarray] = {}
        labels: dict[str, np.ndarray] = {}
        outputs: dict[str, dict[str, list[np.ndarray]]] = {}
        for split in CACHED_SPLITS if plain else ("train",):
            chunks: list[np.ndarray] = []
            label_chunks: list[np.ndarray] = []
            per_cut: dict[str, list[np.ndarray]] = {key.cut: [] for key in plain}
            for batch in _image_batches(index, split, image_size, batch_size, decoded):
                if plain and len(batch.images):
                    for cut, value in extractor(batch.images, [k.cut for k in plain]).items():
                        per_cut[cut].append(value)
                if with_images:
                    chunks.append(batch.images)
                label_chunks.append(batch.labels)
                bar.update(len(batch.images) + len(batch.skipped))
            if with_images:
                images[split] = np.concatenate(chunks)
            labels[split] = np.concatenate(label_chunks)
            for cut, values in per_cut.items():
                outputs.setdefault(cut, {})[split] = values
        return images, labels, outputs, time.perf_counter() - started


def _joined(batches: Mapping[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """One split's batch outputs as one array per split."""
    return {split: np.concatenate(values) for split, values in batches.items()}


def _image_batches(
    index: DatasetIndex,
    split: str,
    image_size: int,
    batch_size: int,
    decoded: Mapping[str, LoadedImages] | None,
) -> Iterator[LoadedImages]:
    """Batches of one split: sliced from decoded images, or decoded from disk meanwhile."""
    if decoded is None:
        # Decoding runs in background threads while the model runs.
        yield from iter_image_batches(index.splits[split], image_size, batch_size)
        return
    loaded = decoded[split]
    if loaded.images.shape[1:3] != (image_size, image_size):
        raise FeatureCacheError(
            f"decoded {split} images are {loaded.images.shape[1]} px, not {image_size} px"
        )
    for start in range(0, len(loaded.images), batch_size):
        rows = slice(start, start + batch_size)
        yield LoadedImages(loaded.images[rows], loaded.labels[rows], loaded.paths[rows])


def _check_representable(array: np.ndarray, key: FeatureKey, split: str) -> None:
    """Refuses features that float16 would turn into inf (every trial would get NaN losses)."""
    if key.dtype != "float16" or not array.size:
        return
    # Two reductions, no temporary the size of the array; NaN propagates (and is refused).
    largest = float(np.maximum(array.max(), -array.min()))
    if not largest <= FLOAT16_MAX:
        raise FeatureCacheError(
            f"cache entry {key.name}, {split} features: values up to {largest:.4g} do not fit "
            f"float16 (max {FLOAT16_MAX:.0f}); set feature_dtype: float32"
        )


def view_augmentation(augmentation: float, view: int) -> Any:
    """The augmentation layers of one view: the recipe's transforms at this strength.

    Each view has its own seed, so views of one strength differ from each other
    and every search that asks for view ``v`` gets the same numbers.
    """
    from core.layers import build_augmentation

    return build_augmentation(augmentation, seed=1_000_003 * (view + 1))


class FeatureExtractor:
    """The frozen backbone up to the highest requested cut, run on uint8 image batches.

    Args:
        backbone: Registry name.
        weights: "imagenet", "none" or a weights file path.
        image_size: Input side in pixels.
        seed: Random-init seed when ``weights`` is "none".
        cuts: Layer names (or ``INPUT_CUT`` for the preprocessed image) to output.
    """

    def __init__(
        self, backbone: str, weights: str, image_size: int, *, seed: int, cuts: Sequence[str]
    ) -> None:
        import keras

        from core.backbones import build_backbone

        self._preprocess = get_backbone(backbone).preprocess_input()
        self.image_size = image_size
        self.cuts = list(cuts)
        self._layer_cuts = [cut for cut in self.cuts if cut != INPUT_CUT]
        self._model = None
        if self._layer_cuts:
            model = build_backbone(backbone, weights, image_size, seed=seed)
            self._model = keras.Model(
                model.input,
                [model.get_layer(cut).output for cut in self._layer_cuts],
                name=f"{backbone}_cuts",
            )

    def __call__(
        self, images: np.ndarray, cuts: Sequence[str] | None = None, *, augment: Any = None
    ) -> dict[str, np.ndarray]:
        """Each requested cut's output (float32) for a batch of uint8 RGB images.

        Args:
            images: Batch of shape (n, size, size, 3), values 0-255.
            cuts: A subset of the extractor's cuts (default: all).
            augment: Keras augmentation layers applied (in training mode) before
                preprocessing.
        """
        import keras

        wanted = list(cuts) if cuts is not None else self.cuts
        batch = images.astype("float32")
        if augment is not None:
            batch = keras.ops.convert_to_numpy(augment(batch, training=True))
        batch = self._preprocess(batch)
        result: dict[str, np.ndarray] = {}
        if INPUT_CUT in wanted:
            result[INPUT_CUT] = np.asarray(batch, dtype="float32")
        if self._model is not None and any(cut != INPUT_CUT for cut in wanted):
            # A compiled predict step, not an eager call: measured 12% faster per
            # batch on CPU here (one trace per batch shape: the full batch and the
            # last one of each split).
            values = self._model.predict_on_batch(batch)
            if not isinstance(values, (list, tuple)):
                values = [values]
            for cut, value in zip(self._layer_cuts, values, strict=True):
                if cut in wanted:
                    result[cut] = np.asarray(value)
        return result

    def close(self) -> None:
        import keras

        self._model = None
        keras.backend.clear_session()

    def __enter__(self) -> FeatureExtractor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
