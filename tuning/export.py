"""Exporting the best trial's configuration, and training the final model from it."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.features import DEFAULT_VIEWS
from core.hyperparameters import HyperparameterError, Hyperparameters

logger = logging.getLogger(__name__)

EXPORT_VERSION = 1


class ExportError(ValueError):
    """A run directory or an exported config is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class BestConfig:
    """Everything needed to train the best trial's model again, exactly.

    Attributes:
        hyperparameters: All hyperparameters (searched and defaults).
        backbone, weights, image_size, seed: The search's model settings.
        epochs: Epochs the best trial trained (its last report).
        max_epochs: Epochs the search planned per trial; the phase switch
            depends on it, so final training switches where the trial did.
        head_epochs: Phase-1 epochs when fine-tuning.
        validation_fraction: Split used for folder-layout data.
        dataset_fingerprint: The data the search ran on.
        class_names: Class names of that data.
        metric, value: The metric and the best trial's value.
        trial_id: The best trial.
        weights_identity: What the weights were (a file's content hash), so
            final training can refuse different weights.
        cache_dir: The search's feature cache.
        augmentation_views: Augmented views per image the search cached.
        feature_dtype: Storage dtype of the search's cached features.
    """

    hyperparameters: Hyperparameters
    backbone: str
    weights: str
    image_size: int
    seed: int
    epochs: int
    max_epochs: int
    head_epochs: int
    validation_fraction: float
    dataset_fingerprint: str
    class_names: tuple[str, ...]
    metric: str
    value: float
    trial_id: str
    weights_identity: str
    cache_dir: str
    augmentation_views: int = DEFAULT_VIEWS
    feature_dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": EXPORT_VERSION,
            "hyperparameters": self.hyperparameters.to_dict(),
            "backbone": self.backbone,
            "weights": self.weights,
            "image_size": self.image_size,
            "seed": self.seed,
            "epochs": self.epochs,
            "max_epochs": self.max_epochs,
            "head_epochs": self.head_epochs,
            "validation_fraction": self.validation_fraction,
            "dataset_fingerprint": self.dataset_fingerprint,
            "class_names": list(self.class_names),
            "metric": self.metric,
            "value": self.value,
            "trial_id": self.trial_id,
            "weights_identity": self.weights_identity,
            "cache_dir": self.cache_dir,
            "augmentation_views": self.augmentation_views,
            "feature_dtype": self.feature_dtype,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> BestConfig:
        required = {
            "hyperparameters": dict,
            "backbone": str,
            "weights": str,
            "image_size": int,
            "seed": int,
            "epochs": int,
            "max_epochs": int,
            "head_epochs": int,
            "validation_fraction": float,
            "dataset_fingerprint": str,
            "class_names": list,
            "metric": str,
            "value": float,
            "trial_id": str,
            "weights_identity": str,
            "cache_dir": str,
        }
        optional = {"augmentation_views": int, "feature_dtype": str}
        missing = [key for key in required if key not in data]
        if missing:
            raise ExportError(f"{source}: missing key(s) {', '.join(missing)}")
        present = {key: kind for key, kind in optional.items() if key in data}
        for key, expected in {**required, **present}.items():
            value = data[key]
            numeric = expected is float and isinstance(value, int)
            if isinstance(value, bool) or not (isinstance(value, expected) or numeric):
                raise ExportError(f"{source}: {key}={value!r}: expected {expected.__name__}")
        unknown = set(data["hyperparameters"]) - set(Hyperparameters.names())
        if unknown:
            raise ExportError(f"{source}: unknown hyperparameter(s) {', '.join(sorted(unknown))}")
        try:
            hparams = Hyperparameters.from_mapping(data["hyperparameters"])
        except HyperparameterError as error:
            raise ExportError(f"{source}: {error}") from error
        return cls(
            hyperparameters=hparams,
            backbone=data["backbone"],
            weights=data["weights"],
            image_size=data["image_size"],
            seed=data["seed"],
            epochs=data["epochs"],
            max_epochs=data["max_epochs"],
            head_epochs=data["head_epochs"],
            validation_fraction=float(data["validation_fraction"]),
            dataset_fingerprint=data["dataset_fingerprint"],
            class_names=tuple(str(name) for name in data["class_names"]),
            metric=data["metric"],
            value=float(data["value"]),
            trial_id=data["trial_id"],
            weights_identity=data["weights_identity"],
            cache_dir=data["cache_dir"],
            **{key: data[key] for key in present},
        )

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> BestConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ExportError(f"{path}: not a readable JSON config ({error})") from error
        if not isinstance(data, dict):
            raise ExportError(f"{path}: expected a JSON object")
        return cls.from_dict(data, str(path))


def best_config(run_dir: str | os.PathLike[str]) -> BestConfig:
    """The best trial of a finished search, from ``run_dir/results.json``."""
    from tuning.search import RESULTS_FILE

    results_path = Path(run_dir) / RESULTS_FILE
    try:
        results = json.loads(results_path.read_text())
    except (OSError, ValueError) as error:
        raise ExportError(
            f"{results_path}: cannot read the search results ({error}); is {run_dir} a "
            "finished bottletune run directory?"
        ) from error
    if not isinstance(results, dict):
        raise ExportError(f"{results_path}: expected a JSON object of search results")
    try:
        trials = {trial["trial_id"]: trial for trial in results["trials"]}
        best_id = results["best_trial_id"]
        if best_id not in trials:
            raise ExportError(f"{results_path}: best_trial_id {best_id!r} names no trial")
        best = trials[best_id]
        search = results["search"]
        candidate = {
            "hyperparameters": best["hyperparameters"],
            "backbone": search["backbone"],
            "weights": search["weights"],
            "image_size": search["image_size"],
            "seed": search["seed"],
            "epochs": best["epochs"],
            "max_epochs": search["max_epochs"],
            "head_epochs": search["head_epochs"],
            "validation_fraction": search["validation_fraction"],
            "dataset_fingerprint": results["dataset"]["fingerprint"],
            "class_names": results["dataset"]["class_names"],
            "metric": results["metric"],
            "value": best["val_accuracy"],
            "trial_id": best["trial_id"],
            "weights_identity": search["weights_identity"],
            "cache_dir": results["cache"]["dir"],
        }
        for key in ("augmentation_views", "feature_dtype"):
            if key in search:
                candidate[key] = search[key]
    except (KeyError, TypeError, AttributeError) as error:
        raise ExportError(
            f"{results_path}: not a bottletune results file (missing or malformed {error})"
        ) from error
    return BestConfig.from_dict(candidate, str(results_path))


def export_best(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = False
) -> BestConfig:
    """Writes the best trial's config to ``out`` as JSON (never over a file unless forced)."""
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    config = best_config(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return config
