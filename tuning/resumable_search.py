"""Ray Tune's Optuna searcher, made to resume from a saved state that Tune left half-written.

Imported only by ``tuning.tuner``, once Ray may be imported (this module
imports it at the top, so that the class pickles by name in ``tuner.pkl``).

Ray Tune saves a search in several files: the trials
(``experiment_state-*.json``), the concurrency limiter's live trials
(``search_gen_state-*.json``) and the searcher (``searcher-state-*.pkl``, with
OptunaSearch's map of Tune trial ids to Optuna trials). They are written and
copied to the storage one after the other, so a driver killed in between
leaves a trial the experiment state holds but the searcher's state does not
know. Seen in the killed-driver test: on resume Tune ran that trial on, and
``OptunaSearch.on_trial_complete`` raised ``KeyError`` on its id, which ended
the whole search.

``ResumableOptunaSearch`` adopts such a trial when it first reports: it takes
the study's RUNNING trial with the same parameters (the one the killed driver
asked for), or asks the study for a new trial with those parameters, and
logs a warning either way. The study then learns from the trial as from any
other, and holds no trial that stays RUNNING forever.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Mapping
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that adopts restored trials its saved state does not know."""

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self._adopt(trial_id, result):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or self._adopt(trial_id, result):
            super().on_trial_complete(trial_id, result=result, error=error)

    def _adopt(self, trial_id: str, result: Mapping[str, Any] | None) -> bool:
        """Whether the trial is known now (adopted if it was not); False if it cannot be."""
        if trial_id in self._ot_trials:
            return True
        config = trial_config(result)
        if config is None:
            logger.warning(
                "Ray Tune reported trial %s, which the restored searcher does not know, "
                "without its config: the Optuna study is not told of it",
                trial_id,
            )
            return False
        trial, how = self._study_trial_for(config)
        self._ot_trials[trial_id] = trial
        logger.warning(
            "Ray Tune restored trial %s, which the searcher's saved state does not know (the "
            "driver died while Tune saved the search); %s Optuna trial %d",
            trial_id,
            how,
            trial.number,
        )
        return True

    def _study_trial_for(self, config: Mapping[str, Any]) -> tuple[optuna.trial.Trial, str]:
        study: optuna.Study = typing.cast(optuna.Study, self._ot_study)
        taken = {trial.number for trial in self._ot_trials.values()}
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for frozen in running:
            if frozen.number in taken or not frozen.params:
                continue
            if all(config.get(name) == value for name, value in frozen.params.items()):
                return optuna.trial.Trial(study, frozen._trial_id), "it continues as"
        study.enqueue_trial(dict(config), skip_if_exists=False)
        if callable(self._space):
            trial = study.ask()
            self._suggest_from_define_by_run_func(self._space, trial)
        else:
            trial = study.ask(fixed_distributions=typing.cast(dict, self._space))
        return trial, "it is told to the study as new"


def trial_config(result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The trial's config in one of Tune's results (nested, or flattened as ``config/...``)."""
    if not result:
        return None
    nested = result.get("config")
    if isinstance(nested, Mapping) and nested:
        return dict(nested)
    flat = {
        key[len("config/") :]: value for key, value in result.items() if key.startswith("config/")
    }
    return flat or None
