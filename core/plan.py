"""The cache plan: which entries a search stores, what they cost, and what it gave up to fit.

Before any feature is computed, the plan lists every entry the search's space
asks for (the plain features at each cut, and the augmented views at each cut
and strength), with its bytes and an estimate of its extraction time, and fits
them under a memory budget (``cache_memory_budget``): the object store of
every node that runs trials holds the entries its trials read, so the budget
bounds the object store, and a search never silently spills to disk.

Where views do not pay, or do not fit, an augmented trial gets "fresh"
augmentation instead: the trial holds the decoded training images, augments
them anew every epoch and runs the frozen layers below its cut on the fly.

What the plan gives up, in order, and why (figures at 150 px on VGG16, from
the layer FLOPs below; accuracy from ``bench/augmentation.py``):

1. Views at cuts where running the frozen layers on the fly costs little
   next to the trained blocks (``FRESH_COST_LIMIT``: unfreeze 3, where blocks
   1-2 are 32% of a forward pass against about 2x a forward pass for training
   blocks 3-5, so +16% per epoch; and unfreeze 2, +55%), and they store
   nothing, so this is chosen whether or not the budget is tight. Measured
   outside this repo on real photographs, fresh transforms beat cached views
   by 1-2 points; measured here on data where augmentation helps, by 1.7-2.5
   points at unfreeze 2 and 1.0-1.4 at unfreeze 1.
2. Fewer views per strength, halving down to 2: bytes halve each time.
   Measured outside this repo, 8 views did no better than 2; measured here,
   on data where augmentation helps, 2 views scored within 0.8 points of 8
   (head, unfreeze 1 and 2; docs/benchmarks.md, section 9).
3. Views at the remaining cuts below the top, in order of least frozen compute
   saved per stored byte (a deep cut stores large activations and saves less
   compute: block3_pool saves 63% of a forward pass in 2x the bytes per image
   of block4_pool, which saves 92%).
4. One view per strength.
5. Views at the top cut (augmented head epochs then run the whole frozen
   backbone per epoch: as slow as an uncached trial).

Plain features are never given up: a budget that cannot hold them is an error
naming the key and the bytes needed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.backbones import INPUT_CUT, get_backbone
from core.data import DatasetIndex
from core.features import FeatureRequest
from core.records import from_dict, to_dict

logger = logging.getLogger(__name__)

AUTO = "auto"
BUDGET_KEY = "cache_memory_budget"
BUDGET_SHARE_OF_STORE = 0.7
"""The default budget's share of a node's object store.

Ray starts spilling objects to disk when its store is 80% full
(``object_spilling_threshold``); the other 10% are left to the search's other
objects (Tune's, and the decoded images of fresh augmentation when they were
not planned)."""
RAY_DEFAULT_STORE_SHARE = 0.3
"""Ray's default object store: 30% of the node's memory (capped by /dev/shm)."""
FRESH_COST_LIMIT = 0.75
"""Fresh augmentation is chosen over views where the frozen layers below the cut
add at most this share to a fine-tuning epoch's compute (by the FLOP model: 16%
at unfreeze 3, 55% at unfreeze 2, about 350% at unfreeze 1 on VGG16).

Measured at 64 px on data where augmentation helps (``bench/augmentation.py``,
2026-12-03): at unfreeze 2, fresh transforms beat 1-8 cached views by 1.7-2.5
points at equal epochs and added 11-18% to a fine-tuning epoch; at unfreeze 1
they beat views by 1.0-1.4 points for 60% more. So unfreeze 2 and 3 augment fresh and
unfreeze 1 and the head keep views. At 96 px (``bench/cache_vs_naive.py``, 2026-12-04)
a fresh unfreeze-2 epoch took 35% longer than one on views, and a fresh unfreeze-1
epoch 3.1x as long (8.5 s against 2.7 s)."""
MIN_HALVED_VIEWS = 2
TRAINING_COST = 3.0
"""A trained layer's forward plus backward pass, in forward passes."""
DTYPE_BYTES = {"float16": 2, "float32": 4}


class PlanError(ValueError):
    """The search cannot fit its budget or its disk; the message names the key and the bytes."""


@dataclass(frozen=True)
class CutProfile:
    """One cut of a backbone at one image size.

    Attributes:
        cut: Layer name (or ``INPUT_CUT``).
        shape: Per-image output shape.
        frozen_share: Share of a whole forward pass spent below and at the cut.
    """

    cut: str
    shape: tuple[int, ...]
    frozen_share: float

    @property
    def values(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class BackboneProfile:
    """Output shapes and compute of every cut: what the plan needs from the backbone.

    Attributes:
        backbone: Registry name.
        image_size: Input side.
        flops_per_image: Multiply-adds x 2 of one forward pass of the whole backbone.
        cuts: Every block end, bottom to top.
    """

    backbone: str
    image_size: int
    flops_per_image: float
    cuts: tuple[CutProfile, ...]

    def cut(self, name: str) -> CutProfile:
        if name == INPUT_CUT:
            return CutProfile(INPUT_CUT, (self.image_size, self.image_size, 3), 0.0)
        for item in self.cuts:
            if item.cut == name:
                return item
        raise PlanError(f"cut {name!r} is not a block end of {self.backbone}")


def profile_backbone(backbone: str, image_size: int, model: Any = None) -> BackboneProfile:
    """Counts the backbone's FLOPs per cut (random init, built here unless given: only
    shapes are read)."""
    import keras

    from core.backbones import build_backbone

    spec = get_backbone(backbone)
    given = model is not None
    if model is None:
        model = build_backbone(backbone, "none", image_size, seed=0)
    flops = 0.0
    by_layer: dict[str, float] = {}
    for layer in model.layers:
        flops += _layer_flops(layer)
        by_layer[layer.name] = flops
    cuts = tuple(
        CutProfile(
            cut,
            tuple(int(d) for d in model.get_layer(cut).output.shape[1:]),
            by_layer[cut] / flops if flops else 0.0,
        )
        for cut in spec.block_ends
    )
    if not given:
        del model
        keras.backend.clear_session()
    return BackboneProfile(backbone, image_size, flops, cuts)


def _layer_flops(layer: Any) -> float:
    """Forward FLOPs per image of one layer: two per multiply-accumulate."""
    from core.cost import layer_macs

    return 2.0 * layer_macs(layer)


def probe_seconds_per_image(
    backbone: str, image_size: int, *, images: int = 4, model: Any = None
) -> float:
    """Times the whole backbone's forward pass on this machine, in seconds per image.

    A warm-up call first (graph tracing), then one timed call on ``images``
    random images: a second or two at 150 px on two CPU cores. ``model``: the
    backbone already built (random init), else it is built here.
    """
    import keras
    import numpy as np

    from core.backbones import build_backbone

    if model is None:
        model = build_backbone(backbone, "none", image_size, seed=0)
    batch = np.random.default_rng(0).uniform(0, 255, (images, image_size, image_size, 3))
    model.predict_on_batch(batch.astype("float32"))
    started = time.perf_counter()
    model.predict_on_batch(batch.astype("float32"))
    seconds = (time.perf_counter() - started) / images
    del model
    keras.backend.clear_session()
    return seconds


def measure_backbone(backbone: str, image_size: int, probe: bool = True) -> list[Any]:
    """``profile_backbone`` and the timed probe on one build of the backbone, as JSON values.

    Returns:
        ``[flops_per_image, [[cut, shape, frozen_share], ...], seconds_per_image]``
        (0 seconds without the probe); ``Profiling.result`` reads it back.
    """
    from core.backbones import build_backbone

    model = build_backbone(backbone, "none", image_size, seed=0)  # built once for both
    profile = profile_backbone(backbone, image_size, model)
    seconds = probe_seconds_per_image(backbone, image_size, model=model) if probe else 0.0
    cuts = [[c.cut, list(c.shape), c.frozen_share] for c in profile.cuts]
    return [profile.flops_per_image, cuts, seconds]


_PROFILE_CODE = (
    "import json, sys\n"
    "from core.plan import measure_backbone\n"
    "name, size, probe = sys.argv[1], int(sys.argv[2]), sys.argv[3] == '1'\n"
    "print(json.dumps(measure_backbone(name, size, probe)))\n"
)


class Profiling:
    """``measure_backbone`` running elsewhere: by default in a fresh interpreter.

    The driver of a search never starts TensorFlow itself (on a GPU node it
    would keep the GPU's memory); the probe may use this node's GPU, which the
    interpreter releases when it exits. It starts at once, so a search starts
    Ray meanwhile; ``result`` waits for it.

    Args:
        pending: Where it already runs instead (an object whose ``result()``
            returns ``measure_backbone``'s value): a search's feature builder,
            which has TensorFlow imported already and extracts on that node.
    """

    def __init__(
        self, backbone: str, image_size: int, probe: bool = True, *, pending: Any = None
    ) -> None:
        from core.runtime import FreshInterpreter

        self.backbone, self.image_size = backbone, image_size
        self._run = pending or FreshInterpreter(
            _PROFILE_CODE,
            [backbone, str(image_size), "1" if probe else "0"],
            what=f"profiling {backbone!r} at {image_size} px",
            cpu_only=False,
        )

    def result(self) -> tuple[BackboneProfile, float]:
        """The profile, and the probe's seconds per image (0 without the probe)."""
        flops, cuts, seconds = self._run.result()
        profile = BackboneProfile(
            self.backbone,
            self.image_size,
            float(flops),
            tuple(CutProfile(cut, tuple(shape), float(share)) for cut, shape, share in cuts),
        )
        return profile, float(seconds)


@dataclass(frozen=True)
class PlannedEntry:
    """One row of the plan: a cut's plain features, or one strength at one cut.

    Attributes:
        cut: The cut.
        strength: 0 for plain features, else the augmentation strength.
        source: "plain", "views" (cached augmented views) or "fresh" (augmented
            anew every epoch from the decoded images, frozen layers on the fly).
        views: Views stored (0 unless ``source`` is "views").
        nbytes: Bytes stored, on disk and in each node's object store.
        cached: How many of its stored entries the cache already holds.
        entries: How many stored entries it is (1 per plain cut, 1 per view).
        extraction_seconds: Estimated time to build what is not cached, here.
    """

    cut: str
    strength: float
    source: str
    views: int
    nbytes: int
    cached: int
    entries: int
    extraction_seconds: float

    @property
    def to_build(self) -> int:
        return self.entries - self.cached


@dataclass(frozen=True)
class CachePlan:
    """What a search caches, and why; ``lines()`` is what ``tune`` and ``cache plan`` print.

    Attributes:
        backbone, image_size, dtype: What the features are.
        train_images, validation_images: How many images each split has.
        views_per_strength: Views each strength keeps at the cuts that store views.
        entries: Every row, plain cuts first.
        images_nbytes: Decoded training images shared with fresh-augmentation trials.
        budget_bytes: The budget the plan was fitted under.
        budget_source: Where the budget came from ("cache_memory_budget=12GB", or
            the object store it was derived from).
        object_store_bytes: The smallest trial node's object store (0: unknown).
        disk_free_bytes: Free space of the cache directory's filesystem (0: unknown).
        bytes_to_build: What extraction will write to disk.
        seconds_per_image: The timed probe: one image through the whole backbone.
        choices: One line per thing given up or chosen, with why.
    """

    backbone: str
    image_size: int
    dtype: str
    train_images: int
    validation_images: int
    views_per_strength: int
    entries: tuple[PlannedEntry, ...]
    images_nbytes: int
    budget_bytes: int
    budget_source: str
    object_store_bytes: int
    disk_free_bytes: int
    seconds_per_image: float
    choices: tuple[str, ...] = ()

    @property
    def nbytes(self) -> int:
        """Bytes in each trial node's object store: every stored entry and the images."""
        return sum(entry.nbytes for entry in self.entries) + self.images_nbytes

    @property
    def disk_bytes(self) -> int:
        return sum(entry.nbytes for entry in self.entries)

    @property
    def bytes_to_build(self) -> int:
        return sum(
            entry.nbytes * entry.to_build // entry.entries
            for entry in self.entries
            if entry.entries
        )

    @property
    def extraction_seconds(self) -> float:
        return sum(entry.extraction_seconds for entry in self.entries)

    @property
    def view_cuts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e.cut for e in self.entries if e.source == "views"))

    @property
    def fresh(self) -> tuple[tuple[str, float], ...]:
        """(cut, strength) pairs that augment fresh every epoch."""
        return tuple((e.cut, e.strength) for e in self.entries if e.source == "fresh")

    def request(self, request: FeatureRequest) -> FeatureRequest:
        """``request`` narrowed to what the plan stores: fewer views, views at fewer cuts."""
        return replace(request, views=max(1, self.views_per_strength), view_cuts=self.view_cuts)

    def lines(self) -> list[str]:
        """The plan as a user reads it: one row per entry, the totals, then the choices."""
        rows = [
            f"cache plan: {self.backbone} at {self.image_size} px, {self.dtype}, "
            f"{self.train_images} training and {self.validation_images} validation images"
        ]
        for entry in self.entries:
            if entry.source == "plain":
                what = "plain"
            else:
                what = f"augmentation {entry.strength:g}: "
                what += f"{entry.views} views" if entry.source == "views" else "fresh"
            if entry.entries == 0:
                state = "on the fly"
            elif entry.to_build == 0:
                state = "cached"
            elif entry.extraction_seconds:
                state = f"build ~{_seconds(entry.extraction_seconds)}"
            else:
                state = "build (in the same pass)"
            rows.append(f"  {entry.cut:<12} {what:<28} {_gb(entry.nbytes):>9}  {state}")
        if self.images_nbytes:
            rows.append(
                f"  {'images':<12} {'training images (uint8)':<28} "
                f"{_gb(self.images_nbytes):>9}  decoded at start"
            )
        store = (
            f"{_gb(self.object_store_bytes)} object store"
            if self.object_store_bytes
            else "an object store of unknown size"
        )
        rows.append(
            f"  total: {_gb(self.nbytes)} per trial node in the object store "
            f"(budget {_gb(self.budget_bytes)}, {self.budget_source}; {store}), "
            f"{_gb(self.disk_bytes)} on disk, {_gb(self.bytes_to_build)} to build"
        )
        rows.append(
            f"  extraction here: ~{_seconds(self.extraction_seconds)} "
            f"(probe: {self.seconds_per_image * 1000:.0f} ms per image through {self.backbone})"
        )
        if self.object_store_bytes and self.nbytes > self.object_store_bytes:
            rows.append(
                "  WARNING: the plan exceeds the object store: Ray will spill features to "
                "disk and trials will read them back from there"
            )
        if self.fresh:
            rows.append(
                "  fresh: augmented anew every epoch; the frozen layers below the cut run on "
                "the fly in the trial"
            )
        rows += [f"  - {choice}" for choice in self.choices]
        return rows

    def show(self, progress: bool) -> None:
        """Prints the plan (with ``progress``), else logs it at INFO."""
        for line in self.lines():
            if progress:
                print(line, flush=True)
            else:
                logger.info("%s", line)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> CachePlan:
        return cls.from_dict(json.loads(path.read_text()), str(path))

    def to_dict(self) -> dict[str, Any]:
        """The plan's fields, and its totals for a reader of the JSON."""
        totals = {name: getattr(self, name) for name in _TOTALS}
        return {**to_dict(self), "totals": totals}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "cache_plan.json") -> CachePlan:
        return from_dict(cls, data, source, ignore=frozenset({"totals"}))


_TOTALS = ("nbytes", "disk_bytes", "bytes_to_build", "extraction_seconds")


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


def _seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGT]i?B|B)?\s*$", re.I)
_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(text: str, key: str = BUDGET_KEY) -> int:
    """Reads "12GB", "500 MiB", "1.2e10" or "12000000000" as bytes.

    Raises:
        PlanError: naming ``key`` and the text.
    """
    match = _SIZE.match(str(text))
    if match is None:
        raise PlanError(
            f"{key}={text!r}: expected '{AUTO}' or a size such as 12GB, 500MiB or 1.2e10 bytes"
        )
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "b").lower()])


def default_object_store_bytes(object_store_memory: int = 0) -> int:
    """The object store a local Ray would start with: the configured size, else Ray's default."""
    if object_store_memory:
        return object_store_memory
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
    store = int(memory * RAY_DEFAULT_STORE_SHARE)
    if Path("/dev/shm").is_dir():
        store = min(store, shutil.disk_usage("/dev/shm").total)
    return store


def resolve_budget(setting: str, object_store_bytes: int) -> tuple[int, str]:
    """The budget in bytes, and where it came from, for ``cache_memory_budget``."""
    if str(setting).strip().lower() != AUTO:
        return parse_bytes(setting), f"{BUDGET_KEY}={setting}"
    if object_store_bytes <= 0:
        raise PlanError(
            f"{BUDGET_KEY}=auto: the object store's size is unknown here; set "
            f"{BUDGET_KEY} to a size such as 12GB"
        )
    return (
        int(object_store_bytes * BUDGET_SHARE_OF_STORE),
        f"{BUDGET_SHARE_OF_STORE:.0%} of the object store",
    )


def disk_free_bytes(location: str | os.PathLike[str]) -> int:
    """Free bytes of the filesystem that holds ``location`` (its nearest existing folder)."""
    path = Path(location).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


@dataclass
class _Draft:
    """The plan while it is being fitted."""

    views: int
    view_cuts: list[str]
    fresh_cuts: list[str] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)


def plan_cache(
    request: FeatureRequest,
    profile: BackboneProfile,
    *,
    train_images: int,
    validation_images: int,
    budget_bytes: int,
    budget_source: str = "",
    object_store_bytes: int = 0,
    disk_free: int = 0,
    seconds_per_image: float = 0.0,
    is_cached: Callable[[str, float, int | None], bool] | None = None,
    fresh_cost_limit: float = FRESH_COST_LIMIT,
) -> CachePlan:
    """Fits the entries ``request`` asks for under ``budget_bytes`` (see the module's order).

    Args:
        request: What the search space asks for (every cut, every strength, views).
        profile: The backbone's shapes and FLOPs at the request's image size.
        train_images, validation_images: Split sizes.
        budget_bytes: Bytes each trial node's object store may hold.
        budget_source: Where the budget came from, for the printed plan.
        object_store_bytes: The smallest trial node's store (0: unknown).
        disk_free: Free bytes where the cache is (0: unknown, not checked).
        seconds_per_image: The probe (0: no time estimates).
        is_cached: Whether the cache holds (cut, strength, view) already.
        fresh_cost_limit: ``fresh_cost_limit``: fresh augmentation by choice where the
            frozen layers below a cut add at most this share to a fine-tuning epoch.

    Raises:
        PlanError: the plain features alone exceed the budget, or what must be
            built exceeds the free disk; the message names both numbers.
    """
    cached = is_cached or (lambda cut, strength, view: False)
    width = DTYPE_BYTES[request.dtype]
    plain_bytes = {
        cut: (train_images + validation_images) * profile.cut(cut).values * width
        for cut in request.cuts
    }
    top = get_backbone(request.backbone).top_cut
    if plain_bytes.get(top, 0) > budget_bytes:
        raise PlanError(
            f"{BUDGET_KEY}: {_gb(budget_bytes)} ({budget_bytes} bytes, {budget_source}) is too "
            f"small for even the plain top cut ({top}): it needs {plain_bytes[top]} bytes "
            f"({_gb(plain_bytes[top])})"
        )
    if sum(plain_bytes.values()) > budget_bytes:
        raise PlanError(
            f"{BUDGET_KEY}: {_gb(budget_bytes)} ({budget_bytes} bytes, {budget_source}) cannot "
            f"hold the plain features of every cut the space's unfreeze_blocks needs: they "
            f"need {sum(plain_bytes.values())} bytes ({_gb(sum(plain_bytes.values()))}); raise "
            f"{BUDGET_KEY}, or narrow unfreeze_blocks or image_size"
        )
    strengths = request.augmentations
    images_bytes = train_images * profile.image_size**2 * 3

    def view_bytes(cut: str) -> int:
        return train_images * profile.cut(cut).values * width

    def total(draft: _Draft) -> int:
        stored = sum(plain_bytes.values())
        stored += len(strengths) * draft.views * sum(view_bytes(c) for c in draft.view_cuts)
        return stored + (images_bytes if strengths and draft.fresh_cuts else 0)

    draft = _Draft(views=request.views, view_cuts=list(request.cuts) if strengths else [])
    if strengths:
        _choose_fresh_where_cheap(draft, profile, top, fresh_cost_limit)
        _fit_budget(draft, profile, top, len(strengths), budget_bytes, total, view_bytes)
    entries = _entries(
        request,
        profile,
        draft,
        plain_bytes,
        view_bytes,
        train_images,
        validation_images,
        seconds_per_image,
        cached,
    )
    plan = CachePlan(
        backbone=request.backbone,
        image_size=request.image_size,
        dtype=request.dtype,
        train_images=train_images,
        validation_images=validation_images,
        views_per_strength=draft.views if draft.view_cuts else 0,
        entries=tuple(entries),
        images_nbytes=images_bytes if strengths and draft.fresh_cuts else 0,
        budget_bytes=budget_bytes,
        budget_source=budget_source,
        object_store_bytes=object_store_bytes,
        disk_free_bytes=disk_free,
        seconds_per_image=seconds_per_image,
        choices=tuple(draft.choices),
    )
    if disk_free and plan.bytes_to_build > disk_free:
        raise PlanError(
            f"the cache plan writes {plan.bytes_to_build} bytes ({_gb(plan.bytes_to_build)}) "
            f"but the cache directory's filesystem has {disk_free} bytes "
            f"({_gb(disk_free)}) free; free space, or set cache_dir elsewhere"
        )
    return plan


def _fresh_overhead(profile: BackboneProfile, cut: str) -> float:
    """What running the frozen layers below ``cut`` adds to a fine-tuning epoch there."""
    frozen = profile.cut(cut).frozen_share
    trained = 1.0 - frozen
    return math.inf if trained <= 0 else frozen / (TRAINING_COST * trained)


def _choose_fresh_where_cheap(
    draft: _Draft, profile: BackboneProfile, top: str, limit: float
) -> None:
    for cut in list(draft.view_cuts):
        if cut == top:
            continue
        overhead = _fresh_overhead(profile, cut)
        if overhead <= limit:
            draft.view_cuts.remove(cut)
            draft.fresh_cuts.append(cut)
            draft.choices.append(
                f"{cut}: fresh augmentation instead of views (the frozen layers below it add "
                f"~{overhead:.0%} to a fine-tuning epoch there; fresh transforms store "
                "nothing, and scored 1-2.5 points above cached views when fine-tuning, "
                "docs/benchmarks.md section 9)"
            )


def _fit_budget(
    draft: _Draft,
    profile: BackboneProfile,
    top: str,
    strengths: int,
    budget: int,
    total: Callable[[_Draft], int],
    view_bytes: Callable[[str], int],
) -> None:
    """Gives up views in the module's order until the draft fits ``budget``."""

    def give_up(line: str, before: int) -> None:
        draft.choices.append(f"{line}: {_gb(before)} -> {_gb(total(draft))} (budget {_gb(budget)})")

    while total(draft) > budget and draft.views > MIN_HALVED_VIEWS and draft.view_cuts:
        before, old = total(draft), draft.views
        draft.views = max(MIN_HALVED_VIEWS, draft.views // 2)
        give_up(f"views per strength {old} -> {draft.views}", before)
    # Least frozen compute saved per stored byte goes first; the top cut stays.
    below_top = sorted(
        (cut for cut in draft.view_cuts if cut != top),
        key=lambda cut: profile.cut(cut).frozen_share / max(1, view_bytes(cut)),
    )
    for cut in below_top:
        if total(draft) <= budget:
            return
        before = total(draft)
        draft.view_cuts.remove(cut)
        draft.fresh_cuts.append(cut)
        give_up(
            f"{cut}: fresh augmentation instead of views (saves "
            f"{_gb(strengths * draft.views * view_bytes(cut))}; its epochs run "
            f"{profile.cut(cut).frozen_share:.0%} of a forward pass more)",
            before,
        )
    if total(draft) > budget and draft.views > 1 and draft.view_cuts:
        before, old = total(draft), draft.views
        draft.views = 1
        give_up(f"views per strength {old} -> 1", before)
    if total(draft) > budget and top in draft.view_cuts:
        before = total(draft)
        draft.view_cuts.remove(top)
        draft.fresh_cuts.append(top)
        give_up(
            f"{top}: fresh augmentation instead of views (augmented head epochs now run the "
            "whole frozen backbone: as slow as an uncached trial)",
            before,
        )


def _entries(
    request: FeatureRequest,
    profile: BackboneProfile,
    draft: _Draft,
    plain_bytes: Mapping[str, int],
    view_bytes: Callable[[str], int],
    train_images: int,
    validation_images: int,
    seconds_per_image: float,
    cached: Callable[[str, float, int | None], bool],
) -> list[PlannedEntry]:
    """The plan's rows: plain cuts (one pass builds them all), then each strength at each cut."""
    entries: list[PlannedEntry] = []
    missing_plain = [cut for cut in request.cuts if not cached(cut, 0.0, None)]
    # One pass over every image computes every missing plain cut at once.
    plain_pass = (
        (train_images + validation_images)
        * seconds_per_image
        * max((profile.cut(cut).frozen_share for cut in missing_plain), default=0.0)
    )
    for number, cut in enumerate(request.cuts):
        is_cached = cut not in missing_plain
        entries.append(
            PlannedEntry(
                cut=cut,
                strength=0.0,
                source="plain",
                views=0,
                nbytes=plain_bytes[cut],
                cached=int(is_cached),
                entries=1,
                extraction_seconds=plain_pass if number == 0 else 0.0,
            )
        )
    view_pass_share = max((profile.cut(c).frozen_share for c in draft.view_cuts), default=0.0)
    for strength in request.augmentations:
        for index, cut in enumerate(request.cuts):
            if cut in draft.view_cuts:
                held = sum(cached(cut, strength, view) for view in range(draft.views))
                missing_views = draft.views - held
                # Each view is one pass over the training images, for all its cuts.
                seconds = (
                    missing_views * train_images * seconds_per_image * view_pass_share
                    if index == request.cuts.index(draft.view_cuts[0])
                    else 0.0
                )
                entries.append(
                    PlannedEntry(
                        cut=cut,
                        strength=strength,
                        source="views",
                        views=draft.views,
                        nbytes=draft.views * view_bytes(cut),
                        cached=held,
                        entries=draft.views,
                        extraction_seconds=seconds,
                    )
                )
            else:
                entries.append(
                    PlannedEntry(
                        cut=cut,
                        strength=strength,
                        source="fresh",
                        views=0,
                        nbytes=0,
                        cached=0,
                        entries=0,
                        extraction_seconds=0.0,
                    )
                )
    return entries


def plan_for(
    request: FeatureRequest,
    index: DatasetIndex,
    *,
    budget: str,
    cache_location: str,
    object_store_bytes: int,
    probe: bool = True,
    mirror_dir: str | None = None,
    profiling: Profiling | None = None,
    fresh_cost_limit: float = FRESH_COST_LIMIT,
) -> CachePlan:
    """The plan of a search on ``index``: what its cache holds already, a timed probe, the disk.

    Args:
        request: Every entry the search space asks for.
        index: The scanned data.
        budget: ``cache_memory_budget`` ("auto" or a size).
        cache_location: The cache directory or URI (its local side is checked for space).
        object_store_bytes: The smallest trial node's object store (0: unknown).
        probe: Time the backbone here (off: no time estimates).
        profiling: The profile and probe, when the caller started them earlier.
        fresh_cost_limit: ``fresh_cost_limit`` (see ``FRESH_COST_LIMIT``).
    """
    from core.features import FeatureCache

    cache = FeatureCache(cache_location, mirror_dir=mirror_dir)
    keys = {(key.cut, key.augmentation, key.view): key for key in cache.keys_for(index, request)}

    def is_cached(cut: str, strength: float, view: int | None) -> bool:
        key = keys.get((cut, strength, view))
        return key is not None and cache.has(key)

    budget_bytes, source = resolve_budget(budget, object_store_bytes)
    profiling = profiling or Profiling(request.backbone, request.image_size, probe)
    profile, seconds_per_image = profiling.result()
    return plan_cache(
        request,
        profile,
        train_images=len(index.splits["train"]),
        validation_images=len(index.splits["validation"]),
        budget_bytes=budget_bytes,
        budget_source=source,
        object_store_bytes=object_store_bytes,
        disk_free=disk_free_bytes(cache.root),
        seconds_per_image=seconds_per_image,
        is_cached=is_cached,
        fresh_cost_limit=fresh_cost_limit,
    )
