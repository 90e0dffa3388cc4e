"""Warm start: a new search that begins from an earlier one's results.

``bottletune tune --warm-start PATH`` reads an earlier run directory
(``results.json``, a ``SearchSummary``) or an exported ``best.json``
(``BestConfig``), checks that its trials were trained like this search's, and
turns them into what the new Optuna study is seeded with:

- every earlier trial that lies in the new space and reported a value, as a
  COMPLETE study trial with that value and the new space's distributions, so
  that the sampler's model (TPE's) is fitted on them from the first trial on;
- the earlier best configuration, enqueued, so that the first trial of the new
  search evaluates it again.

An earlier trial is in the new space when every parameter the space suggests
for it lies in its range or choices, every fixed value the space sets is the
one it trained with, and every hyperparameter the space leaves out is at its
default (which the new trials train with). Parameters the space declares but
whose condition does not hold for that trial do not matter, as for the new
trials. The trials outside are skipped and counted, in one log line that says
why.

The study remembers that it was seeded, and with how many trials (user
attributes), so seeding it again adds nothing, and a resumed search matches
the study's later trials to Ray Tune's (``tuning.resume``) without them.

This module imports no Ray; Optuna is imported only when a study is seeded or
a trial is converted.
"""

from __future__ import annotations

import logging
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.hyperparameters import Hyperparameters
from search_spaces import SearchSpace, to_optuna
from tuning.config import SearchConfig
from tuning.run_dir import METRIC, MODE, RESULTS_FILE, BestConfig, SearchSummary, TrialSummary

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

SEEDED_ATTR = "warm_start"
"""Study user attribute: where the study's warm start came from (set once, when seeded)."""
SEEDED_COUNT_ATTR = "warm_start_trials"
"""Study user attribute: how many earlier trials were added (the study's first ones)."""
EARLIER_TRIAL_ATTR = "warm_start_trial"
"""Trial user attribute: the earlier trial a seeded (or enqueued) study trial stands for."""
_SHOWN_VALUES = 3


class WarmStartError(ValueError):
    """The earlier results cannot seed this search (the message names the file and the key)."""


@dataclass(frozen=True)
class EarlierTrial:
    """One trial of the earlier search, as far as a warm start needs it.

    Attributes:
        trial_id: The earlier trial's Ray Tune id.
        hyperparameters: Every hyperparameter it trained with.
        value: Its validation accuracy (its last epoch's), None if it reported none.
        intermediate_values: Its validation accuracy per epoch.
    """

    trial_id: str
    hyperparameters: Hyperparameters
    value: float | None
    intermediate_values: dict[int, float]

    @classmethod
    def from_summary(cls, trial: TrialSummary) -> EarlierTrial:
        per_epoch: dict[int, float] = {}
        for row in trial.history:
            epoch, accuracy = row.get("training_iteration"), _finite(row.get(METRIC))
            if isinstance(epoch, (int, float)) and accuracy is not None:
                per_epoch[int(epoch)] = accuracy
        value = _finite(trial.val_accuracy)
        return cls(trial.trial_id, trial.hyperparameters, value, per_epoch)


@dataclass(frozen=True)
class EarlierSearch:
    """What an earlier search left that a warm start reads.

    Attributes:
        source: The file it was read from.
        backbone, image_size: Its model settings (a warm start needs the same).
        max_epochs: The epochs it planned per trial.
        dataset_fingerprint: The data it ran on.
        best_trial_id: Its best trial.
        trials: Its trials, in its order.
    """

    source: str
    backbone: str
    image_size: int
    max_epochs: int
    dataset_fingerprint: str
    best_trial_id: str
    trials: tuple[EarlierTrial, ...]

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> EarlierSearch:
        """Reads a run directory (its ``results.json``), a ``results.json`` or a ``best.json``.

        Raises:
            WarmStartError: When the path does not exist or is from another metric.
            RunDirError: When the file is unreadable or not such a file (naming it).
        """
        path = Path(path)
        if not path.exists():
            raise WarmStartError(
                f"--warm-start {path}: no such file or directory (give a run directory "
                f"with {RESULTS_FILE}, or a best.json written by bottletune export)"
            )
        if path.is_dir() or path.name == RESULTS_FILE:
            run_dir = path if path.is_dir() else path.parent
            summary = SearchSummary.read(run_dir)
            return cls.from_summary(summary, str(run_dir / RESULTS_FILE))
        return cls.from_best(BestConfig.read(path), str(path))

    @classmethod
    def from_summary(cls, summary: SearchSummary, source: str) -> EarlierSearch:
        _check_metric(source, summary.metric, summary.mode)
        return cls(
            source=source,
            backbone=summary.search.backbone,
            image_size=summary.search.image_size,
            max_epochs=summary.search.max_epochs,
            dataset_fingerprint=summary.dataset.fingerprint,
            best_trial_id=summary.best_trial_id,
            trials=tuple(EarlierTrial.from_summary(trial) for trial in summary.trials),
        )

    @classmethod
    def from_best(cls, best: BestConfig, source: str) -> EarlierSearch:
        """An exported best trial: one earlier trial, with its value (no per-epoch history)."""
        _check_metric(source, best.metric, MODE)
        trial = EarlierTrial(best.trial_id, best.hyperparameters, best.value, {})
        return cls(
            source=source,
            backbone=best.backbone,
            image_size=best.image_size,
            max_epochs=best.max_epochs,
            dataset_fingerprint=best.dataset_fingerprint,
            best_trial_id=best.trial_id,
            trials=(trial,),
        )

    def check_compatible(self, config: SearchConfig, fingerprint: str) -> None:
        """Refuses other model settings; warns about other data or epochs, and goes on.

        Args:
            config: This search's config.
            fingerprint: The fingerprint of the data this search runs on.

        Raises:
            WarmStartError: When the backbone or the image size differ (naming both).
        """
        features = config.features
        for key, earlier, this in (
            ("backbone", self.backbone, features.backbone),
            ("image_size", self.image_size, features.image_size),
        ):
            if earlier != this:
                raise WarmStartError(
                    f"--warm-start {self.source}: {key} {earlier} (warm start) != {this} "
                    "(this search); its accuracies were measured on other features, so it "
                    "cannot seed this search"
                )
        if self.dataset_fingerprint != fingerprint:
            logger.warning(
                "warm start: %s ran on other data (dataset fingerprint %s, this search's %s); "
                "its results seed this search all the same",
                self.source,
                self.dataset_fingerprint,
                fingerprint,
            )
        if self.max_epochs != config.schedule.max_epochs:
            logger.warning(
                "warm start: the earlier trials planned %d epochs, this search plans %d; "
                "their accuracies seed the sampler as they were",
                self.max_epochs,
                config.schedule.max_epochs,
            )


@dataclass(frozen=True)
class SeedTrial:
    """An earlier trial as a trial of the new study.

    Attributes:
        trial_id: The earlier trial it stands for.
        params: The values of the parameters the new space suggests for it.
        distributions: Their distributions, as the new space's adapter asks Optuna.
        value: Its validation accuracy.
        intermediate_values: Its validation accuracy per epoch.
    """

    trial_id: str
    params: dict[str, Any]
    distributions: dict[str, optuna.distributions.BaseDistribution]
    value: float
    intermediate_values: dict[int, float]


@dataclass(frozen=True)
class Skipped:
    """Earlier trials skipped for one reason.

    Attributes:
        name: The hyperparameter at fault ("" when the trial reported no value).
        problem: What is wrong with its value here ("is outside [0, 2]").
        values: The distinct values at fault, as shown.
        count: How many trials.
    """

    name: str
    problem: str
    values: tuple[str, ...]
    count: int

    def __str__(self) -> str:
        if not self.name:
            return f"{self.problem} ({self.count})"
        shown = ", ".join(self.values[:_SHOWN_VALUES])
        more = ", ..." if len(self.values) > _SHOWN_VALUES else ""
        return f"{self.name}={shown}{more} {self.problem} ({self.count})"


@dataclass(frozen=True)
class WarmStart:
    """What a new study is seeded with: earlier trials as COMPLETE, and one to evaluate first.

    Attributes:
        source: Where the earlier results were read.
        completed: The earlier trials added to the study with their values.
        first: The earlier best configuration in this space, which the first trial evaluates.
        total: How many trials the earlier results held.
        skipped: Why the others were skipped, the most frequent reason first.
    """

    source: str
    completed: tuple[SeedTrial, ...]
    first: SeedTrial | None
    total: int
    skipped: tuple[Skipped, ...] = ()

    def skipped_line(self) -> str | None:
        """One line naming how many earlier trials were skipped and why (None if none)."""
        if not self.skipped:
            return None
        count = sum(group.count for group in self.skipped)
        reasons = ", ".join(str(group) for group in self.skipped)
        return f"warm start: skipped {count} of {self.total} earlier trials: {reasons}"

    def seed(self, study: optuna.Study) -> bool:
        """Adds the earlier trials to ``study`` and enqueues the one to evaluate first.

        A study that was seeded already (by a run that is now resumed, say) is
        left as it is, so no earlier trial is added twice.

        Returns:
            Whether the study was seeded now.

        Raises:
            WarmStartError: When the study holds trials and was not seeded.
        """
        import optuna

        if SEEDED_ATTR in study.user_attrs:
            logger.info(
                "warm start: the study was seeded from %s already; nothing is added",
                study.user_attrs[SEEDED_ATTR],
            )
            return False
        if study.trials:
            # A resume counts the seeded trials as the study's first (seeded_trial_count).
            raise WarmStartError(
                f"warm start: study {study.study_name!r} holds trials already; a warm start "
                "seeds a new search's study only"
            )
        for trial in self.completed:
            study.add_trial(
                optuna.trial.create_trial(
                    state=optuna.trial.TrialState.COMPLETE,
                    value=trial.value,
                    params=trial.params,
                    distributions=trial.distributions,
                    intermediate_values=trial.intermediate_values,
                    user_attrs={EARLIER_TRIAL_ATTR: trial.trial_id},
                )
            )
        if self.first is not None:
            study.enqueue_trial(
                dict(self.first.params), user_attrs={EARLIER_TRIAL_ATTR: self.first.trial_id}
            )
        study.set_user_attr(SEEDED_COUNT_ATTR, len(self.completed))
        # Set last: a study that holds the mark holds every earlier trial.
        study.set_user_attr(SEEDED_ATTR, self.source)
        return True


def seeded_trial_count(storage: Any, study_name: str) -> int:
    """How many of the study's first trials a warm start added (0 without one).

    They come before any trial Ray Tune asked for, so a resume that matches
    the study's trials to Tune's in order skips them first.
    """
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no such study yet
        return 0
    if SEEDED_ATTR not in study.user_attrs:
        return 0
    return int(study.user_attrs.get(SEEDED_COUNT_ATTR, 0))


def plan_warm_start(
    path: str | os.PathLike[str], config: SearchConfig, space: SearchSpace, fingerprint: str
) -> WarmStart:
    """Reads and checks the earlier results and converts them for this search's study.

    Logs what the warm start brings, and one line naming the skipped trials.

    Args:
        path: A run directory, its ``results.json``, or a ``best.json``.
        config: This search's config.
        space: This search's space.
        fingerprint: The fingerprint of this search's data.

    Raises:
        WarmStartError: When the earlier search used another backbone or image size.
        RunDirError: When the earlier results cannot be read.
    """
    earlier = EarlierSearch.read(path)
    earlier.check_compatible(config, fingerprint)
    warm_start = convert(earlier, space)
    line = warm_start.skipped_line()
    if line is not None:
        logger.warning("%s", line)
    if warm_start.first is None:
        logger.warning("warm start: no earlier trial of %s lies in this space", earlier.source)
    else:
        logger.info(
            "warm start: %d earlier trials of %s seed the sampler; the first trial evaluates %s "
            "(%s=%.4f)%s",
            len(warm_start.completed),
            earlier.source,
            warm_start.first.trial_id,
            METRIC,
            warm_start.first.value,
            ""
            if warm_start.first.trial_id == earlier.best_trial_id
            else f", the best in this space (the earlier best {earlier.best_trial_id} is not)",
        )
    return warm_start


def convert(earlier: EarlierSearch, space: SearchSpace) -> WarmStart:
    """The earlier trials as trials of a study of ``space``, and the best one to enqueue."""
    completed: list[SeedTrial] = []
    skipped: dict[tuple[str, str], list[str]] = {}
    for trial in earlier.trials:
        seed, why = seed_trial(trial, space)
        if seed is None:
            assert why is not None
            skipped.setdefault(why, []).append(_shown(trial, why[0]))
        else:
            completed.append(seed)
    first = next((seed for seed in completed if seed.trial_id == earlier.best_trial_id), None)
    if first is None and completed:
        # Ties go to the earlier trial, as in SearchSummary.create.
        first = max(completed, key=lambda seed: seed.value)
    reasons = sorted(skipped.items(), key=lambda item: -len(item[1]))
    return WarmStart(
        source=earlier.source,
        completed=tuple(completed),
        first=first,
        total=len(earlier.trials),
        skipped=tuple(
            Skipped(name, problem, tuple(dict.fromkeys(values)), len(values))
            for (name, problem), values in reasons
        ),
    )


def seed_trial(
    trial: EarlierTrial, space: SearchSpace
) -> tuple[SeedTrial | None, tuple[str, str] | None]:
    """An earlier trial as a study trial of ``space``, or why it is not in the space.

    Returns:
        The seed trial and None, or None and (hyperparameter, what is wrong with its value).
    """
    if trial.value is None:
        return None, ("", f"reported no {METRIC}")
    values = trial.hyperparameters.to_dict()
    recorder = _SuggestionRecorder(values)
    constants = to_optuna(space)(typing.cast("optuna.trial.BaseTrial", recorder))
    if recorder.outside is not None:
        return None, recorder.outside
    for name, value in constants.items():
        if values[name] != value:
            return None, (name, f"is not the fixed {_text(value)}")
    defaults = Hyperparameters().to_dict()
    for name in Hyperparameters.names():
        if space.get(name) is None and values[name] != defaults[name]:
            return None, (name, f"is not searched here (trials use {_text(defaults[name])})")
    seed = SeedTrial(
        trial_id=trial.trial_id,
        params=recorder.params,
        distributions=recorder.distributions,
        value=trial.value,
        intermediate_values=dict(trial.intermediate_values),
    )
    return seed, None


class _SuggestionRecorder:
    """Stands in for an Optuna trial: answers each suggestion with the earlier value.

    The space's own adapter runs on it, so the conditions, the parameters and
    their distributions are the ones the new search's trials get. The first
    value outside its distribution is kept as the reason the trial is outside.
    """

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values
        self.params: dict[str, Any] = {}
        self.distributions: dict[str, optuna.distributions.BaseDistribution] = {}
        self.outside: tuple[str, str] | None = None

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        from optuna.distributions import FloatDistribution

        inside = low <= self.values[name] <= high
        return self._suggest(name, FloatDistribution(low, high, log=log), inside, low, high)

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        from optuna.distributions import IntDistribution

        inside = low <= self.values[name] <= high
        return self._suggest(name, IntDistribution(low, high, log=log), inside, low, high)

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        from optuna.distributions import CategoricalDistribution

        value = self.values[name]
        if value not in choices and self.outside is None:
            self.outside = (name, f"is not among [{', '.join(_text(c) for c in choices)}]")
        self.params[name] = value
        self.distributions[name] = CategoricalDistribution(choices)
        return value

    def _suggest(
        self,
        name: str,
        distribution: optuna.distributions.BaseDistribution,
        inside: bool,
        low: Any,
        high: Any,
    ) -> Any:
        if not inside and self.outside is None:
            self.outside = (name, f"is outside [{_text(low)}, {_text(high)}]")
        self.params[name] = self.values[name]
        self.distributions[name] = distribution
        return self.values[name]


def _check_metric(source: str, metric: str, mode: str) -> None:
    if (metric, mode) != (METRIC, MODE):
        raise WarmStartError(
            f"--warm-start {source}: metric {metric!r} ({mode}) is not this search's "
            f"{METRIC!r} ({MODE})"
        )


def _finite(value: Any) -> float | None:
    """The value as a float if it is a finite number, else None (NaN, missing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _shown(trial: EarlierTrial, name: str) -> str:
    return _text(trial.hyperparameters.to_dict()[name]) if name else ""
