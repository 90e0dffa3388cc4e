"""The run directory: every file a search and a final training write, as typed records.

A search's run directory::

    RUN_DIR/
      config.yaml     the resolved config (flat, as a config file)
      space.yaml      the search space as resolved
      search.json     RunManifest: the data, the space, where Tune keeps trials
      optuna.journal  the Optuna study (optuna-dashboard opens it)
      trials/         Ray Tune's experiment (unless storage_path puts it elsewhere)
      results.json    SearchSummary: every trial and the best one, once finished

``bottletune export`` writes a ``BestConfig`` (``best.json``); ``bottletune
train`` writes a model directory: ``model.keras``, ``model_info.json``
(``ModelInfo``) and ``metrics.json`` (``FinalMetrics``). Each record is a
frozen dataclass whose fields are the file's keys; ``to_dict``/``from_dict``
are derived from them (``core.records``), so the CLI, export, final training
and the tests read and write one definition.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from core.backbones import weights_identity
from core.data import DatasetIndex
from core.features import DEFAULT_VIEWS, CacheStats, FeatureRequest
from core.hyperparameters import Hyperparameters, TrainingSetup
from core.inference import INFO_FILE, ModelInfo
from core.plan import CachePlan
from core.records import RecordError, from_dict, to_dict
from search_spaces import SearchSpace
from tuning.config import FeatureSettings, SearchConfig, write_config

__all__ = [
    "CONFIG_FILE",
    "EXPORT_VERSION",
    "INFO_FILE",
    "MANIFEST_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "RESULTS_FILE",
    "SPACE_FILE",
    "STUDY_FILE",
    "STUDY_NAME",
    "TRIALS_DIR",
    "BestConfig",
    "BuildSite",
    "CacheSummary",
    "ClusterSummary",
    "DatasetRef",
    "DatasetSummary",
    "FinalMetrics",
    "ModelInfo",
    "RunDirError",
    "RunManifest",
    "SearchSettings",
    "SearchSummary",
    "TrialSummary",
    "check_new_run_dir",
    "start_run_dir",
]

CONFIG_FILE = "config.yaml"
SPACE_FILE = "space.yaml"
MANIFEST_FILE = "search.json"
PLAN_FILE = "cache_plan.json"
STUDY_FILE = "optuna.journal"
STUDY_NAME = "bottletune"
TRIALS_DIR = "trials"
RESULTS_FILE = "results.json"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
EXPORT_VERSION = 1
T = TypeVar("T")

METRIC = "val_accuracy"
MODE = "max"


class RunDirError(ValueError):
    """A run directory or one of its files is missing, unreadable or inconsistent."""


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunDirError(f"{path}: cannot read {what} ({error})") from error


def _record(
    cls: type[T], data: Any, source: str, *, what: str = "", ignore: frozenset[str] = frozenset()
) -> T:
    """``core.records.from_dict`` with its error as a ``RunDirError`` (``what`` before it)."""
    try:
        return from_dict(cls, data, source, ignore=ignore)
    except RecordError as error:
        raise RunDirError(f"{what}{error}") from error


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


# search.json


@dataclass(frozen=True)
class DatasetRef:
    """The data a search runs on."""

    path: str
    fingerprint: str


@dataclass(frozen=True)
class RunManifest:
    """``search.json``: written before the first trial, read back by ``--resume``.

    Attributes:
        dataset: The data's absolute path and fingerprint.
        space: The search space, as ``SearchSpace.to_dict`` writes it.
        experiment: Where Ray Tune keeps the trials (a path or a URI).
        started: When the search started (ISO 8601).
    """

    dataset: DatasetRef
    space: dict[str, Any]
    experiment: str
    started: str = ""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str) -> RunManifest:
        return _record(cls, data, source, what="unreadable: ")

    @classmethod
    def read(cls, run_dir: Path) -> RunManifest:
        path = run_dir / MANIFEST_FILE
        return cls.from_dict(_read_json(path, "the search manifest"), str(path))

    def write(self, run_dir: Path) -> None:
        _write_json(run_dir / MANIFEST_FILE, self.to_dict())


def check_new_run_dir(run_dir: Path) -> None:
    """Refuses a run directory that is a file or holds anything (nothing is overwritten)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} is a file; choose a new directory")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(
            f"run directory {run_dir} is not empty; choose a new one (or --resume it)"
        )


def start_run_dir(
    run_dir: Path,
    config: SearchConfig,
    space: SearchSpace,
    data_path: str | Path,
    fingerprint: str,
    experiment: str,
) -> None:
    """Creates a new run directory with the resolved config, the space and the manifest."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(config, run_dir / CONFIG_FILE)
    (run_dir / SPACE_FILE).write_text(yaml.safe_dump(space.to_dict(), sort_keys=False))
    RunManifest(
        dataset=DatasetRef(str(Path(data_path).absolute()), fingerprint),
        space=space.to_dict(),
        experiment=experiment,
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    ).write(run_dir)


# results.json


@dataclass(frozen=True)
class TrialSummary:
    """One trial of a search, as ``results.json`` lists it.

    Attributes:
        trial_id: Ray Tune's trial id.
        status: "completed", "stopped_early" (by ASHA or the time budget) or "error".
        epochs: Epochs the trial reported (its last report's ``training_iteration``).
        val_accuracy: Validation accuracy of its last epoch (None if it reported none).
        val_loss: Validation loss of its last epoch.
        hyperparameters: Every hyperparameter, searched or default.
        searched: The values the searcher chose.
        history: One row per epoch, each epoch once: when a retried trial
            reported an epoch again, the retry's report is kept.
        path: The trial's folder in Ray Tune's experiment.
        error: The error a failed trial ended with.
    """

    trial_id: str
    status: str
    epochs: int
    val_accuracy: float | None
    val_loss: float | None
    hyperparameters: Hyperparameters
    searched: dict[str, Any]
    history: list[dict[str, Any]]
    path: str
    error: str | None = None


@dataclass(frozen=True)
class DatasetSummary:
    """The data a search ran on."""

    path: str
    fingerprint: str
    layout: str
    class_names: tuple[str, ...]
    counts: dict[str, int]


@dataclass(frozen=True)
class SearchSettings:
    """The settings final training needs to train a trial's model again."""

    backbone: str
    weights: str
    weights_identity: str
    image_size: int
    seed: int
    head_epochs: int
    max_epochs: int
    validation_fraction: float
    augmentation_views: int = DEFAULT_VIEWS
    feature_dtype: str = "float32"


@dataclass(frozen=True)
class BuildSite:
    """Where the feature builder (a Ray actor) built the search's missing plain features."""

    pid: int
    node: str
    gpu_ids: list[str]


@dataclass(frozen=True)
class CacheSummary:
    """The search's feature cache, and which entries it found or built."""

    dir: str
    hits: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)
    built_by: BuildSite | None = None


@dataclass(frozen=True)
class ClusterSummary:
    """The Ray cluster the search ran on."""

    address: str
    nodes: list[str]


@dataclass(frozen=True)
class SearchSummary:
    """``results.json``: what a finished search leaves behind.

    The best trial is judged on its last reported epoch, as Ray Tune's
    ``get_best_result(scope="last")`` does.
    """

    metric: str
    mode: str
    seconds: float
    dataset: DatasetSummary
    search: SearchSettings
    cache: CacheSummary
    best_trial_id: str
    trials: list[TrialSummary]
    cluster: ClusterSummary | None = None

    @property
    def best(self) -> TrialSummary:
        """The trial ``best_trial_id`` names.

        Raises:
            RunDirError: when it names no trial.
        """
        for trial in self.trials:
            if trial.trial_id == self.best_trial_id:
                return trial
        raise RunDirError(f"best_trial_id {self.best_trial_id!r} names no trial")

    @classmethod
    def create(
        cls,
        *,
        config: SearchConfig,
        data_path: str | Path,
        index: DatasetIndex,
        cache: CacheStats,
        built_by: BuildSite | None,
        cluster: ClusterSummary,
        trials: list[TrialSummary],
        seconds: float,
    ) -> SearchSummary:
        """The summary of a finished search.

        Raises:
            RunDirError: when no trial reported an epoch (naming their errors).
        """
        scored = [trial for trial in trials if trial.val_accuracy is not None]
        if not scored:
            errors = "; ".join(str(t.error) for t in trials if t.error) or "no trial reported"
            raise RunDirError(f"no trial finished an epoch: {errors}")
        # Ties go to the earlier trial.
        best = max(scored, key=lambda trial: trial.val_accuracy or 0.0)
        features = config.features
        return cls(
            metric=METRIC,
            mode=MODE,
            seconds=round(seconds, 2),
            dataset=DatasetSummary(
                path=str(Path(data_path).absolute()),
                fingerprint=index.fingerprint,
                layout=index.layout,
                class_names=tuple(index.class_names),
                counts={split: len(records) for split, records in index.splits.items()},
            ),
            search=SearchSettings(
                backbone=features.backbone,
                weights=_absolute_weights(features.weights),
                weights_identity=weights_identity(features.weights, config.seed),
                image_size=features.image_size,
                seed=config.seed,
                head_epochs=config.schedule.head_epochs,
                max_epochs=config.schedule.max_epochs,
                validation_fraction=features.validation_fraction,
                augmentation_views=features.augmentation_views,
                feature_dtype=features.feature_dtype,
            ),
            cache=CacheSummary(
                dir=config.cache_location,
                hits=list(cache.hits),
                misses=list(cache.misses),
                built_by=built_by,
            ),
            cluster=cluster,
            best_trial_id=best.trial_id,
            trials=trials,
        )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str) -> SearchSummary:
        return _record(cls, data, source, what="not a bottletune results file: ")

    @classmethod
    def read(cls, run_dir: str | os.PathLike[str]) -> SearchSummary:
        path = Path(run_dir) / RESULTS_FILE
        what = f"the search results of a finished bottletune run directory {run_dir}"
        return cls.from_dict(_read_json(path, what), str(path))

    def write(self, run_dir: Path) -> None:
        _write_json(run_dir / RESULTS_FILE, self.to_dict())


def _absolute_weights(weights: str) -> str:
    """A weights file as an absolute path, so an exported config works from anywhere."""
    return weights if weights in ("imagenet", "none") else str(Path(weights).absolute())


# best.json


@dataclass(frozen=True)
class BestConfig:
    """``best.json``: everything needed to train the best trial's model again, exactly.

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
        augmentation_views: Augmented views per image the search cached (its
            cache plan's, when the plan cached fewer than the config asked).
        feature_dtype: Storage dtype of the search's cached features.
        fresh_cuts: The cuts where the search's plan had this trial's strength
            augmented afresh every epoch instead of read from views; final
            training does the same.
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
    fresh_cuts: tuple[str, ...] = ()

    @classmethod
    def from_summary(
        cls, summary: SearchSummary, source: str, plan: CachePlan | None = None
    ) -> BestConfig:
        """The best trial of a finished search (``source``: where it was read, for errors).

        Args:
            plan: The search's cache plan (``cache_plan.json``), so that final
                training reads the views, or augments afresh, as the trial did.
        """
        try:
            best = summary.best
        except RunDirError as error:
            raise RunDirError(f"{source}: {error}") from None
        if best.val_accuracy is None:
            raise RunDirError(f"{source}: the best trial {best.trial_id} reported no {METRIC}")
        search = summary.search
        return cls(
            hyperparameters=best.hyperparameters,
            backbone=search.backbone,
            weights=search.weights,
            image_size=search.image_size,
            seed=search.seed,
            epochs=best.epochs,
            max_epochs=search.max_epochs,
            head_epochs=search.head_epochs,
            validation_fraction=search.validation_fraction,
            dataset_fingerprint=summary.dataset.fingerprint,
            class_names=summary.dataset.class_names,
            metric=summary.metric,
            value=best.val_accuracy,
            trial_id=best.trial_id,
            weights_identity=search.weights_identity,
            cache_dir=summary.cache.dir,
            augmentation_views=(plan.views_per_strength or search.augmentation_views)
            if plan is not None
            else search.augmentation_views,
            feature_dtype=search.feature_dtype,
            fresh_cuts=tuple(
                cut
                for cut, strength in (plan.fresh if plan is not None else ())
                if strength == best.hyperparameters.augmentation
            ),
        )

    @property
    def features(self) -> FeatureSettings:
        """The search's feature settings, for the same cache entries the trial used."""
        return FeatureSettings(
            backbone=self.backbone,
            weights=self.weights,
            image_size=self.image_size,
            validation_fraction=self.validation_fraction,
            augmentation_views=self.augmentation_views,
            feature_dtype=self.feature_dtype,
        )

    def training_setup(self) -> TrainingSetup:
        """The trial's setup: its epochs, switching phase where the trial did."""
        return TrainingSetup(
            backbone=self.backbone,
            weights=self.weights,
            image_size=self.image_size,
            epochs=self.epochs,
            head_epochs=self.head_epochs,
            seed=self.seed,
            planned_epochs=self.max_epochs,
        )

    def feature_request(self) -> FeatureRequest:
        """The cache entries this trial's model trains on (its depth and strength only)."""
        request = self.features.request(
            seed=self.seed,
            unfreeze_depths=[self.hyperparameters.unfreeze_blocks],
            strengths=[self.hyperparameters.augmentation],
        )
        if not self.fresh_cuts:
            return request
        return replace(
            request, view_cuts=tuple(cut for cut in request.cuts if cut not in self.fresh_cuts)
        )

    @property
    def augments_fresh(self) -> bool:
        """Whether final training needs the decoded training images (fresh augmentation)."""
        return self.hyperparameters.augmentation > 0 and bool(self.fresh_cuts)

    def to_dict(self) -> dict[str, Any]:
        return {"version": EXPORT_VERSION, **to_dict(self)}

    @classmethod
    def from_dict(cls, data: Any, source: str) -> BestConfig:
        if isinstance(data, dict) and isinstance(data.get("hyperparameters"), dict):
            unknown = set(data["hyperparameters"]) - set(Hyperparameters.names())
            if unknown:
                raise RunDirError(
                    f"{source}: unknown hyperparameter(s) {', '.join(sorted(unknown))}"
                )
        return _record(cls, data, source, ignore=frozenset({"version"}))

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> BestConfig:
        path = Path(path)
        return cls.from_dict(_read_json(path, "an exported config"), str(path))

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, self.to_dict())


# A final model's metrics.json


@dataclass(frozen=True)
class FinalMetrics:
    """``metrics.json`` beside a final model.

    Attributes:
        trained_validation_accuracy: Validation accuracy, in training, of the epoch
            whose weights were saved.
        validation_accuracy: The saved model's, loaded back, on the validation split.
        search_value: The trial's validation accuracy in the search.
        epochs: Epochs trained.
        history: One row per epoch, as the trainer reported it.
        kept_epoch: The epoch whose weights the model holds (None in a
            ``metrics.json`` written before this was recorded: the last).
        epoch_weights: ``best`` or ``last``, as ``train_final`` was asked.
        test_accuracy: The saved model's on the test split, when the data has one.
    """

    trained_validation_accuracy: float
    validation_accuracy: float
    search_value: float
    epochs: int
    history: list[dict[str, Any]]
    kept_epoch: int | None = None
    epoch_weights: str = "last"
    test_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = to_dict(self)
        if self.test_accuracy is None:
            del data["test_accuracy"]
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str) -> FinalMetrics:
        return _record(cls, data, source)

    @classmethod
    def read(cls, model_dir: Path) -> FinalMetrics:
        path = model_dir / METRICS_FILE
        return cls.from_dict(_read_json(path, "the model's metrics"), str(path))

    def write(self, model_dir: Path) -> None:
        _write_json(model_dir / METRICS_FILE, self.to_dict())
