"""The search configuration: typed, validated, loaded from YAML presets and --set overrides."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.backbones import BACKBONES, get_backbone
from core.features import FEATURE_DTYPES, is_uri
from tuning.samplers import SAMPLER_NAMES

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names both.

    Attributes:
        key: The offending key, when one key is to blame.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class SearchConfig:
    """Everything about a search except the data and the search space's contents.

    Attributes:
        backbone: Registry name of the conv base ("vgg16", "mobilenet").
        weights: "imagenet", "none" (random init) or a path to a weights file.
        image_size: Side of the square input in pixels.
        num_samples: Trials to run.
        max_epochs: Epochs of a trial that ASHA never stops (ASHA's max_t).
        head_epochs: Phase-1 epochs of a trial that fine-tunes.
        grace_period: Epochs before ASHA may stop a trial.
        reduction_factor: ASHA's reduction factor.
        sampler: Optuna sampler: tpe, random, cmaes or gp.
        seed: Seed of the sampler, the data split and the models.
        max_concurrent_trials: Trials running at once (0: as many as fit).
        cpus_per_trial: CPUs reserved per trial (fractions allowed).
        gpus_per_trial: GPUs reserved per trial (fractions allowed: 0.25 puts
            four trials on one GPU).
        time_budget_s: Stop starting new trials after this many seconds (0: no limit).
        cache_dir: Where bottleneck features are cached: a local directory, or a
            URI (s3://, gs://, any pyarrow filesystem) shared between clusters.
        space: A search-space preset name or a YAML file.
        validation_fraction: Validation share when the data is one folder of
            class subfolders.
        batch_size: Extraction batch size (training batch size is a hyperparameter).
        include_dashboard: Start the Ray dashboard with a local cluster.
        dashboard_host: Interface the dashboard listens on.
        dashboard_port: Port of the dashboard (0: Ray's default, 8265, or the next
            free port).
        object_store_memory: Bytes for a local Ray object store (0: Ray's default).
        max_failures: Times a failed trial is retried from its last checkpoint.
        augmentation_views: Augmented views cached per training image and
            augmentation strength; each epoch an augmented trial draws one.
        feature_dtype: How cached features are stored and shared: "float16"
            (half the disk and memory) or "float32".
        storage_path: Where Ray Tune keeps trials and checkpoints ("": the run
            directory). On several nodes, shared storage or a URI (s3://, gs://)
            every node reaches.
    """

    backbone: str = "vgg16"
    weights: str = "imagenet"
    image_size: int = 150
    num_samples: int = 16
    max_epochs: int = 10
    head_epochs: int = 3
    grace_period: int = 4
    reduction_factor: int = 2
    sampler: str = "tpe"
    seed: int = 0
    max_concurrent_trials: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    time_budget_s: float = 0.0
    cache_dir: str = "~/.cache/bottletune"
    space: str = "default"
    validation_fraction: float = 0.2
    batch_size: int = 32
    include_dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 0
    object_store_memory: int = 0
    max_failures: int = 0
    augmentation_views: int = 8
    feature_dtype: str = "float16"
    storage_path: str = ""

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            expected = _field_type(item.name)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, item.name, float(value))
                continue
            if not isinstance(value, expected) or (
                expected is not bool and isinstance(value, bool)
            ):
                raise ConfigError(f"{item.name}={value!r}: expected {expected.__name__}")
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
        _require(self.num_samples >= 1, "num_samples", self.num_samples, ">= 1")
        _require(self.max_epochs >= 1, "max_epochs", self.max_epochs, ">= 1")
        _require(self.head_epochs >= 1, "head_epochs", self.head_epochs, ">= 1")
        _require(
            1 <= self.grace_period <= self.max_epochs,
            "grace_period",
            self.grace_period,
            f"between 1 and max_epochs ({self.max_epochs})",
        )
        _require(self.reduction_factor >= 2, "reduction_factor", self.reduction_factor, ">= 2")
        _require(
            self.sampler in SAMPLER_NAMES,
            "sampler",
            self.sampler,
            f"one of {', '.join(SAMPLER_NAMES)}",
        )
        _require(
            self.max_concurrent_trials >= 0,
            "max_concurrent_trials",
            self.max_concurrent_trials,
            ">= 0",
        )
        _require(self.cpus_per_trial > 0, "cpus_per_trial", self.cpus_per_trial, "> 0")
        _require(self.gpus_per_trial >= 0, "gpus_per_trial", self.gpus_per_trial, ">= 0")
        _require(
            self.gpus_per_trial <= 1 or self.gpus_per_trial.is_integer(),
            "gpus_per_trial",
            self.gpus_per_trial,
            "a fraction below 1 or a whole number (Ray cannot split a trial across GPUs "
            "fractionally above 1)",
        )
        _require(self.time_budget_s >= 0, "time_budget_s", self.time_budget_s, ">= 0")
        _require(
            0 < self.validation_fraction < 1,
            "validation_fraction",
            self.validation_fraction,
            "in (0, 1)",
        )
        _require(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        _require(
            self.object_store_memory >= 0, "object_store_memory", self.object_store_memory, ">= 0"
        )
        _require(
            self.max_failures >= -1, "max_failures", self.max_failures, ">= 0 (or -1 for unlimited)"
        )
        _require(
            0 <= self.dashboard_port <= 65535,
            "dashboard_port",
            self.dashboard_port,
            "a TCP port (0: Ray's default, 8265 or the next free one)",
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
        for key in ("cache_dir", "storage_path"):
            location = getattr(self, key)
            if is_uri(location) and "@" in location.split("://", 1)[1].split("/", 1)[0]:
                raise ConfigError(
                    f"{key}: credentials in the URI would be written to config.yaml, "
                    "results.json and the logs; give them through the environment (e.g. "
                    "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or an instance profile",
                    key,
                )
        if not self.weights:
            raise ConfigError(
                "weights='': expected imagenet, none or a weights file path", "weights"
            )

    @property
    def cache_location(self) -> str:
        """The cache as ``FeatureCache`` takes it: a URI as is, a local path absolute."""
        if is_uri(self.cache_dir):
            return self.cache_dir
        return str(Path(os.path.expanduser(self.cache_dir)).absolute())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> SearchConfig:
        return load_config(overrides=changes, base=self)


def _field_type(name: str) -> type:
    return type(getattr(SearchConfig, name))


def _require(condition: bool, key: str, value: object, requirement: str) -> None:
    if not condition:
        raise ConfigError(f"{key}={value!r}: must be {requirement}", key)


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
    if key not in {f.name for f in dataclasses.fields(SearchConfig)}:
        valid = ", ".join(f.name for f in dataclasses.fields(SearchConfig))
        raise ConfigError(f"{source}: unknown key {key!r}; valid keys: {valid}")
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
    values = dataclasses.asdict(base) if base is not None else {}
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
            values[key] = _coerce(str(key), value, str(file))
            sources[str(key)] = str(file)
        space = values.get("space")
        if isinstance(space, str) and (file.parent / space).is_file():
            # A space file named in a config file is found next to that file.
            values["space"] = str((file.parent / space).resolve())
    for key, value in (overrides or {}).items():
        values[key] = _coerce(key, value, "--set")
        sources[key] = "--set"
    try:
        return SearchConfig(**values)
    except ConfigError as error:
        # Blame where the bad value came from: the file, --set, or a default.
        source = sources.get(error.key or "", "")
        prefix = f"{source}: " if source else ""
        raise ConfigError(f"{prefix}{error}", error.key) from None


def write_config(config: SearchConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
