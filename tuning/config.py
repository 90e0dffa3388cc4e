"""The search configuration: typed, validated, loaded from YAML presets and --set overrides.

A config file is one flat mapping of keys; inside, ``SearchConfig`` holds them
in groups by what they decide (``config.features.image_size``,
``config.schedule.max_epochs``, ...), and what depends on a group (the keys a
resume may change, the feature cache's request) is derived from it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from core.backbones import BACKBONES, get_backbone
from core.features import FEATURE_DTYPES, FeatureRequest, is_uri
from core.hyperparameters import TrainingSetup
from core.plan import FRESH_COST_LIMIT
from tuning.samplers import SAMPLER_NAMES

if TYPE_CHECKING:
    from search_spaces import SearchSpace

logger = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names both.

    Attributes:
        key: The offending key, when one key is to blame.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class _Group:
    """A frozen group of config keys; every value is checked against its default's type."""

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            expected = type(item.default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, item.name, float(value))
                continue
            if not isinstance(value, expected) or (
                expected is not bool and isinstance(value, bool)
            ):
                raise ConfigError(f"{item.name}={value!r}: expected {expected.__name__}", item.name)
        self.validate()

    def validate(self) -> None:
        """Checks values against each other; raises ConfigError naming the key."""


@dataclass(frozen=True)
class FeatureSettings(_Group):
    """What the cached features are: everything besides the data and seed they depend on.

    Attributes:
        backbone: Registry name of the conv base ("vgg16", "mobilenet").
        weights: "imagenet", "none" (random init) or a path to a weights file.
        image_size: Side of the square input in pixels.
        validation_fraction: Validation share when the data is one folder of
            class subfolders.
        augmentation_views: Augmented views cached per training image and
            augmentation strength; each epoch an augmented trial draws one.
        feature_dtype: How cached features are stored and shared: "float16"
            (half the disk and memory) or "float32".
        cache_memory_budget: Bytes the cache plan may put in each trial node's
            object store ("12GB", "500MiB", "1.2e10"), or "auto": 70% of the
            smallest trial node's object store (see ``core.plan``).
        fresh_cost_limit: The cache plan gives a cut fresh augmentation instead
            of views where the frozen layers below it add at most this share to
            a fine-tuning epoch (FLOP model; VGG16: 0.16 at unfreeze 3, 0.55 at
            unfreeze 2, 3.5 at unfreeze 1). 0.75 by default: unfreeze 2 and 3
            augment fresh, which measured 1.7-2.5 points better than views at
            unfreeze 2; 0.25 keeps views at unfreeze 2 (faster epochs there).
    """

    backbone: str = "vgg16"
    weights: str = "imagenet"
    image_size: int = 150
    validation_fraction: float = 0.2
    augmentation_views: int = 8
    feature_dtype: str = "float16"
    cache_memory_budget: str = "auto"
    fresh_cost_limit: float = FRESH_COST_LIMIT

    def validate(self) -> None:
        from core.plan import AUTO, PlanError, parse_bytes

        _require(self.fresh_cost_limit >= 0, "fresh_cost_limit", self.fresh_cost_limit, ">= 0")

        if self.cache_memory_budget.strip().lower() != AUTO:
            try:
                budget = parse_bytes(self.cache_memory_budget)
            except PlanError as error:
                raise ConfigError(str(error), "cache_memory_budget") from None
            _require(budget > 0, "cache_memory_budget", self.cache_memory_budget, "> 0")
        if self.backbone not in BACKBONES:
            raise ConfigError(
                f"backbone={self.backbone!r}: choose one of {', '.join(sorted(BACKBONES))}",
                "backbone",
            )
        spec = get_backbone(self.backbone)
        _require(
            self.image_size >= spec.min_image_size,
            "image_size",
            self.image_size,
            f">= {spec.min_image_size} for {self.backbone}",
        )
        _require(
            0 < self.validation_fraction < 1,
            "validation_fraction",
            self.validation_fraction,
            "in (0, 1)",
        )
        _require(
            self.augmentation_views >= 1, "augmentation_views", self.augmentation_views, ">= 1"
        )
        _require(
            self.feature_dtype in FEATURE_DTYPES,
            "feature_dtype",
            self.feature_dtype,
            f"one of {', '.join(FEATURE_DTYPES)}",
        )
        if not self.weights:
            raise ConfigError(
                "weights='': expected imagenet, none or a weights file path", "weights"
            )

    def request(
        self,
        *,
        seed: int,
        unfreeze_depths: Iterable[int],
        strengths: Iterable[float],
        extraction_batch_size: int = 32,
    ) -> FeatureRequest:
        """The cache entries for trials that unfreeze these depths and augment at these strengths.

        The one mapping from settings to the cache's arguments, used by the
        search, ``bottletune cache warm`` and final training alike.
        """
        return FeatureRequest(
            backbone=self.backbone,
            weights=self.weights,
            image_size=self.image_size,
            cuts=tuple(get_backbone(self.backbone).cuts_for(list(unfreeze_depths))),
            augmentations=tuple(strengths),
            views=self.augmentation_views,
            dtype=self.feature_dtype,
            seed=seed,
            extraction_batch_size=extraction_batch_size,
        )


@dataclass(frozen=True)
class ExtractionSettings(_Group):
    """Where features are cached and how they are built; neither changes what they are.

    Attributes:
        cache_dir: A local directory, or a URI (s3://, gs://, any pyarrow
            filesystem) shared between clusters.
        extraction_batch_size: Images per backbone forward pass while building
            the cache. (The training batch is the ``batch_size`` hyperparameter.)
    """

    cache_dir: str = "~/.cache/bottletune"
    extraction_batch_size: int = 32

    def validate(self) -> None:
        _require(
            self.extraction_batch_size >= 1,
            "extraction_batch_size",
            self.extraction_batch_size,
            ">= 1",
        )
        _refuse_credentials("cache_dir", self.cache_dir)


@dataclass(frozen=True)
class ScheduleSettings(_Group):
    """How many trials, how long each trains, and how long the search may run.

    Attributes:
        num_samples: Trials to run.
        max_epochs: Epochs of a trial that ASHA never stops (ASHA's max_t).
        head_epochs: Phase-1 epochs of a trial that fine-tunes.
        time_budget_s: Stop starting new trials after this many seconds (0: no limit).
        max_failures: Times a failed trial is retried from its last checkpoint.
    """

    num_samples: int = 16
    max_epochs: int = 10
    head_epochs: int = 3
    time_budget_s: float = 0.0
    max_failures: int = 0

    def validate(self) -> None:
        _require(self.num_samples >= 1, "num_samples", self.num_samples, ">= 1")
        _require(self.max_epochs >= 1, "max_epochs", self.max_epochs, ">= 1")
        _require(self.head_epochs >= 1, "head_epochs", self.head_epochs, ">= 1")
        _require(self.time_budget_s >= 0, "time_budget_s", self.time_budget_s, ">= 0")
        _require(
            self.max_failures >= -1, "max_failures", self.max_failures, ">= 0 (or -1 for unlimited)"
        )


@dataclass(frozen=True)
class AshaSettings(_Group):
    """ASHA's early stopping.

    Attributes:
        grace_period: Epochs before ASHA may stop a trial (with cost: epochs of
            a head-only trial, which cost 1 each).
        reduction_factor: ASHA's reduction factor.
        asha_time_attr: What ASHA counts a trial's time in: "epochs", or
            "cost" (compute in head epochs, ``core.cost``: a fine-tuning epoch
            counts as the hundreds of head epochs its blocks' arithmetic is
            worth, so rungs sit at equal compute rather than equal epochs).
    """

    grace_period: int = 4
    reduction_factor: int = 2
    asha_time_attr: str = "epochs"

    # grace_period's bounds depend on max_epochs: SearchConfig checks them.
    def validate(self) -> None:
        _require(self.reduction_factor >= 2, "reduction_factor", self.reduction_factor, ">= 2")
        _require(
            self.asha_time_attr in ASHA_TIME_ATTRIBUTES,
            "asha_time_attr",
            self.asha_time_attr,
            f"one of {', '.join(ASHA_TIME_ATTRIBUTES)}",
        )


ASHA_TIME_ATTRIBUTES = ("epochs", "cost")
"""Values of ``asha_time_attr``."""

FIRST_TRIALS = ("plain", "sampled")
"""Values of ``first_trial``."""


@dataclass(frozen=True)
class SearcherSettings(_Group):
    """What is searched, and by which Optuna sampler.

    Attributes:
        space: A search-space preset name or a YAML file.
        sampler: Optuna sampler: tpe, random, cmaes or gp.
        first_trial: ``plain``: the first trial has no augmentation and trains
            the head only (its other values sampled), so that it starts on the
            features built first, while the views are built; ``sampled``: the
            sampler chooses all of it. A warm start's first trial comes first
            either way.
    """

    space: str = "default"
    sampler: str = "tpe"
    first_trial: str = "plain"

    def validate(self) -> None:
        _require(
            self.sampler in SAMPLER_NAMES,
            "sampler",
            self.sampler,
            f"one of {', '.join(SAMPLER_NAMES)}",
        )
        _require(
            self.first_trial in FIRST_TRIALS,
            "first_trial",
            self.first_trial,
            f"one of {', '.join(FIRST_TRIALS)}",
        )


@dataclass(frozen=True)
class ResourceSettings(_Group):
    """What one trial reserves, and how many run at once.

    Attributes:
        cpus_per_trial: CPUs reserved per trial (fractions allowed).
        gpus_per_trial: GPUs reserved per trial (fractions allowed: 0.25 puts
            four trials on one GPU).
        max_concurrent_trials: Trials running at once (0: as many as fit).
    """

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent_trials: int = 0

    def validate(self) -> None:
        _require(self.cpus_per_trial > 0, "cpus_per_trial", self.cpus_per_trial, "> 0")
        _require(self.gpus_per_trial >= 0, "gpus_per_trial", self.gpus_per_trial, ">= 0")
        _require(
            self.gpus_per_trial <= 1 or self.gpus_per_trial.is_integer(),
            "gpus_per_trial",
            self.gpus_per_trial,
            "a fraction below 1 or a whole number (Ray cannot split a trial across GPUs "
            "fractionally above 1)",
        )
        _require(
            self.max_concurrent_trials >= 0,
            "max_concurrent_trials",
            self.max_concurrent_trials,
            ">= 0",
        )


@dataclass(frozen=True)
class LocalRaySettings(_Group):
    """The single-node Ray a search starts when no ``--address`` is given.

    Attributes:
        include_dashboard: Start the Ray dashboard.
        dashboard_host: Interface the dashboard listens on.
        dashboard_port: Port of the dashboard (0: Ray's default, 8265, or the
            next free port).
        object_store_memory: Bytes for the object store (0: Ray's default).
    """

    include_dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 0
    object_store_memory: int = 0

    def validate(self) -> None:
        _require(
            0 <= self.dashboard_port <= 65535,
            "dashboard_port",
            self.dashboard_port,
            "a TCP port (0: Ray's default, 8265 or the next free one)",
        )
        _require(
            self.object_store_memory >= 0, "object_store_memory", self.object_store_memory, ">= 0"
        )


@dataclass(frozen=True)
class StorageSettings(_Group):
    """Where Ray Tune keeps trials and checkpoints.

    Attributes:
        storage_path: "" for the run directory; on several nodes, shared
            storage or a URI (s3://, gs://) every node reaches.
    """

    storage_path: str = ""

    def validate(self) -> None:
        _refuse_credentials("storage_path", self.storage_path)


ENGINES = ("ray", "keras-tuner")
KERAS_TUNER_ORACLES = ("hyperband", "bayesian", "random")


@dataclass(frozen=True)
class EngineSettings(_Group):
    """Which engine runs the search: Ray Tune, or KerasTuner on this machine alone.

    Attributes:
        engine: "ray" (Ray Tune, Optuna and ASHA; clusters, resume) or
            "keras-tuner" (KerasTuner's own oracle, one trial at a time in
            this process; see ``tuning.kt_engine``).
        kt_oracle: KerasTuner's oracle: hyperband, bayesian or random.
    """

    engine: str = "ray"
    kt_oracle: str = "bayesian"

    def validate(self) -> None:
        _require(self.engine in ENGINES, "engine", self.engine, f"one of {', '.join(ENGINES)}")
        _require(
            self.kt_oracle in KERAS_TUNER_ORACLES,
            "kt_oracle",
            self.kt_oracle,
            f"one of {', '.join(KERAS_TUNER_ORACLES)}",
        )


GROUPS: dict[str, Any] = {
    "features": FeatureSettings,
    "extraction": ExtractionSettings,
    "schedule": ScheduleSettings,
    "asha": AshaSettings,
    "searcher": SearcherSettings,
    "resources": ResourceSettings,
    "local_ray": LocalRaySettings,
    "storage": StorageSettings,
    "engine": EngineSettings,
}
"""Attribute of ``SearchConfig`` -> its group; a user's YAML stays one flat mapping."""

KEY_GROUPS: dict[str, str] = {
    item.name: group for group, kind in GROUPS.items() for item in dataclasses.fields(kind)
}
"""Flat config key -> the group that holds it (``seed`` belongs to no group)."""

RUNTIME_GROUPS = ("extraction", "local_ray")
"""Groups that say how the driver runs, not what the search does: they may change on resume."""

RENAMED_KEYS = {"batch_size": "extraction_batch_size"}
"""Keys of older configs -> their names now; read with a warning."""


@dataclass(frozen=True)
class SearchConfig:
    """Everything about a search except the data and the search space's contents.

    Read from one flat YAML mapping (``load_config``); inside, the keys sit in
    groups by what they decide. ``seed`` seeds everything: the sampler, the
    data split, a random-init backbone and training.
    """

    seed: int = 0
    features: FeatureSettings = field(default_factory=FeatureSettings)
    extraction: ExtractionSettings = field(default_factory=ExtractionSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    asha: AshaSettings = field(default_factory=AshaSettings)
    searcher: SearcherSettings = field(default_factory=SearcherSettings)
    resources: ResourceSettings = field(default_factory=ResourceSettings)
    local_ray: LocalRaySettings = field(default_factory=LocalRaySettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed={self.seed!r}: expected int", "seed")
        # Only ASHA reads grace_period; the keras-tuner engine refuses it set at all.
        _require(
            self.engine.engine != "ray" or 1 <= self.asha.grace_period <= self.schedule.max_epochs,
            "grace_period",
            self.asha.grace_period,
            f"between 1 and max_epochs ({self.schedule.max_epochs})",
        )

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> SearchConfig:
        """Builds a config from flat keys (as in YAML); unknown keys are a ConfigError."""
        grouped: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
        seed: Any = 0
        for key, value in values.items():
            if key == "seed":
                seed = value
            elif key in KEY_GROUPS:
                grouped[KEY_GROUPS[key]][key] = value
            else:
                raise ConfigError(f"unknown key {key!r}; valid keys: {', '.join(FLAT_KEYS)}", key)
        parts = {group: GROUPS[group](**grouped[group]) for group in GROUPS}
        return cls(seed=seed, **parts)

    @property
    def cache_location(self) -> str:
        """The cache as ``FeatureCache`` takes it: a URI as is, a local path absolute."""
        cache_dir = self.extraction.cache_dir
        if is_uri(cache_dir):
            return cache_dir
        return str(Path(os.path.expanduser(cache_dir)).absolute())

    def feature_request(self, space: SearchSpace) -> FeatureRequest:
        """The entries a search's trials start from: built once, used by the search and
        ``bottletune cache warm``.

        The top block's output always (the head trains on it), plus the cut below
        the unfrozen blocks of every possible ``unfreeze_blocks`` value; each
        augmentation strength gets views at every one of those cuts.
        """
        return self.features.request(
            seed=self.seed,
            unfreeze_depths=space.unfreeze_block_values(),
            strengths=space.augmentation_levels(),
            extraction_batch_size=self.extraction.extraction_batch_size,
        )

    def training_setup(self) -> TrainingSetup:
        """What every trial takes from the search rather than from its hyperparameters."""
        return TrainingSetup(
            backbone=self.features.backbone,
            weights=self.features.weights,
            image_size=self.features.image_size,
            epochs=self.schedule.max_epochs,
            head_epochs=self.schedule.head_epochs,
            seed=self.seed,
        )

    def to_dict(self) -> dict[str, Any]:
        """The flat mapping a YAML config file holds, in ``FLAT_KEYS`` order."""
        flat: dict[str, Any] = {"seed": self.seed}
        for group in GROUPS:
            flat.update(dataclasses.asdict(getattr(self, group)))
        return {key: flat[key] for key in FLAT_KEYS}

    def replace(self, **changes: Any) -> SearchConfig:
        """A copy with some flat keys changed, validated like a loaded config."""
        return load_config(overrides=changes, base=self)


FLAT_KEYS: tuple[str, ...] = ("seed", *KEY_GROUPS)
"""Every key a config file may set."""

RUNTIME_KEYS = frozenset(
    item.name for group in RUNTIME_GROUPS for item in dataclasses.fields(GROUPS[group])
)
"""Flat keys that may change when a search is resumed (derived from ``RUNTIME_GROUPS``)."""


def _field_type(key: str) -> type:
    if key == "seed":
        return int
    kind = GROUPS[KEY_GROUPS[key]]
    return type(next(f.default for f in dataclasses.fields(kind) if f.name == key))


def _require(condition: bool, key: str, value: object, requirement: str) -> None:
    if not condition:
        raise ConfigError(f"{key}={value!r}: must be {requirement}", key)


def _refuse_credentials(key: str, location: str) -> None:
    if is_uri(location) and "@" in location.split("://", 1)[1].split("/", 1)[0]:
        raise ConfigError(
            f"{key}: credentials in the URI would be written to config.yaml, "
            "results.json and the logs; give them through the environment (e.g. "
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or an instance profile",
            key,
        )


def resolve_config_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A YAML file path, or the name of a preset in ``configs/``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = CONFIGS_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    presets = sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))
    raise ConfigError(
        f"config {str(name_or_path)!r}: no such file, and not a preset (presets: "
        f"{', '.join(presets) or 'none'})"
    )


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Turns ``key=value`` strings into a mapping, values parsed as YAML scalars."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, separator, raw = pair.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        result[key] = yaml.safe_load(raw) if raw.strip() else ""
    return result


def _coerce(key: str, value: Any, source: str) -> Any:
    if key not in FLAT_KEYS:
        raise ConfigError(f"{source}: unknown key {key!r}; valid keys: {', '.join(FLAT_KEYS)}")
    expected = _field_type(key)
    if expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. weights given as a bare path-like number is unlikely, but safe
    if expected is str and value is None:
        return "none" if key == "weights" else value
    if expected is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-5 (no dot) as a string
        except ValueError:
            pass
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: SearchConfig | None = None,
) -> SearchConfig:
    """Builds a ``SearchConfig`` from defaults, a YAML file and overrides, in that order.

    Raises:
        ConfigError: naming the file or --set key and the bad value.
    """
    values = base.to_dict() if base is not None else {}
    sources: dict[str, str] = {}
    if path is not None:
        file = resolve_config_path(path)
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{file}: not valid YAML: {error}") from error
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: expected a mapping of config keys")
        for key, value in data.items():
            key = _current_name(str(key), str(file))
            values[key] = _coerce(key, value, str(file))
            sources[key] = str(file)
        space = values.get("space")
        if isinstance(space, str) and (file.parent / space).is_file():
            # A space file named in a config file is found next to that file.
            values["space"] = str((file.parent / space).resolve())
    for key, value in (overrides or {}).items():
        key = _current_name(key, "--set")
        values[key] = _coerce(key, value, "--set")
        sources[key] = "--set"
    try:
        return SearchConfig.from_flat(values)
    except ConfigError as error:
        # Blame where the bad value came from: the file, --set, or a default.
        source = sources.get(error.key or "", "")
        prefix = f"{source}: " if source else ""
        raise ConfigError(f"{prefix}{error}", error.key) from None


def _current_name(key: str, source: str) -> str:
    """The key's name now; an old name (``batch_size``) is read with a warning."""
    if key not in RENAMED_KEYS:
        return key
    logger.warning(
        "%s: %r is now %r (the training batch is the batch_size hyperparameter of the "
        "search space); reading it as %s",
        source,
        key,
        RENAMED_KEYS[key],
        RENAMED_KEYS[key],
    )
    return RENAMED_KEYS[key]


def write_config(config: SearchConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
