"""Unit tests for tuning.samplers: the registry contract, errors and seeded determinism."""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import optuna
import pytest

from search_spaces import load_space, to_optuna
from tuning.samplers import SAMPLER_NAMES, SamplerError, make_sampler

EXPECTED_CLASSES: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "gp": optuna.samplers.GPSampler,
}
# The packages each sampler needs beyond Optuna, and the phrase its error must contain.
OPTIONAL_DEPENDENCIES: dict[str, tuple[tuple[str, ...], str]] = {
    "cmaes": (("cmaes",), "pip install cmaes"),
    "gp": (("torch", "scipy"), "pip install torch"),
}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def test_registry_and_expected_classes_agree() -> None:
    assert set(SAMPLER_NAMES) == set(EXPECTED_CLASSES)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_every_sampler_builds_or_explains_the_missing_package(name: str) -> None:
    modules, install_hint = OPTIONAL_DEPENDENCIES.get(name, ((), ""))
    missing = [module for module in modules if not _installed(module)]
    if missing:
        with pytest.raises(SamplerError) as raised:
            make_sampler(name, seed=0)
        message = str(raised.value)
        assert f"'{name}'" in message
        assert install_hint in message
        for module in missing:
            assert module in message
    else:
        sampler = make_sampler(name, seed=0)
        assert isinstance(sampler, optuna.samplers.BaseSampler)
        assert type(sampler) is EXPECTED_CLASSES[name]


def test_cmaes_error_message_when_missing() -> None:
    if _installed("cmaes"):
        assert isinstance(make_sampler("cmaes", seed=1), optuna.samplers.CmaEsSampler)
    else:
        with pytest.raises(SamplerError, match=r"^sampler 'cmaes' needs the cmaes package"):
            make_sampler("cmaes", seed=1)


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_seed_may_be_none(name: str) -> None:
    assert isinstance(make_sampler(name, seed=None), EXPECTED_CLASSES[name])


def test_unknown_name_lists_the_valid_names() -> None:
    with pytest.raises(SamplerError) as raised:
        make_sampler("hyperband", seed=0)
    message = str(raised.value)
    assert "'hyperband'" in message
    for name in SAMPLER_NAMES:
        assert name in message


def test_tpe_is_multivariate_grouped_with_constant_liar_and_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", optuna.exceptions.ExperimentalWarning)
        sampler = make_sampler("tpe", seed=0)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    # Private attributes, but the only way to see the flags were passed.
    assert sampler._multivariate is True
    assert sampler._group is True
    assert sampler._constant_liar is True


def _param_sequence(name: str, seed: int, n_trials: int = 12) -> list[dict[str, Any]]:
    define_by_run = to_optuna(load_space("default"))

    def objective(trial: optuna.trial.Trial) -> float:
        define_by_run(trial)
        params = trial.params
        return (
            (params["dropout"] - 0.3) ** 2
            + params["unfreeze_blocks"] * 0.1
            + params["dense_units"] / 1000.0
        )

    study = optuna.create_study(sampler=make_sampler(name, seed=seed))
    study.optimize(objective, n_trials=n_trials)
    return [trial.params for trial in study.trials]


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_same_seed_gives_the_same_trials(name: str) -> None:
    first = _param_sequence(name, seed=3)
    assert len(first) == 12
    assert first == _param_sequence(name, seed=3)
    assert first != _param_sequence(name, seed=4)


def test_a_dry_run_predicts_the_searchs_first_trials() -> None:
    """What the view builder's order rests on: Ray's OptunaSearch asks the same first trials."""
    from ray.tune.search.optuna import OptunaSearch

    from tuning.samplers import first_suggestions

    space = load_space("default")
    for name in ("tpe", "random"):
        predicted = first_suggestions(name, 3, to_optuna(space), 6)
        searcher = OptunaSearch(
            space=to_optuna(space), metric="val_accuracy", mode="max",
            sampler=make_sampler(name, 3),
        )  # fmt: skip
        asked = [searcher.suggest(f"trial_{i}") for i in range(6)]
        assert [p["augmentation"] for p in predicted] == [a["augmentation"] for a in asked]
        assert predicted == [{k: a[k] for k in p} for p, a in zip(predicted, asked, strict=True)]


def test_the_dry_run_opens_its_study_as_the_search_does() -> None:
    """With first_trial: plain, Tune's first trial is plain and the dry run still predicts all."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from tuning.config import SearchConfig
    from tuning.samplers import first_suggestions
    from tuning.tuner import STUDY_NAME, open_study, opening

    space = load_space("default")
    first = opening(SearchConfig(), space, None)
    assert first is not None
    predicted = first_suggestions("tpe", 3, to_optuna(space), 6, opening=first)
    storage = optuna.storages.InMemoryStorage()
    first(open_study(storage))
    searcher = OptunaSearch(
        space=to_optuna(space), metric="val_accuracy", mode="max",
        sampler=make_sampler("tpe", 3), storage=storage, study_name=STUDY_NAME,
    )  # fmt: skip
    asked = [searcher.suggest(f"trial_{i}") for i in range(6)]
    assert (asked[0]["augmentation"], asked[0]["unfreeze_blocks"]) == (0.0, 0)
    assert predicted == [{k: a[k] for k in p} for p, a in zip(predicted, asked, strict=True)]
    # The plain trial's other values are sampled, and the trials after it are the sampler's.
    assert {"dropout", "l2", "head_learning_rate"} <= set(predicted[0])
    assert any(p["augmentation"] > 0 for p in predicted[1:])
    # Opening a study that holds trials already (a resumed search's) adds none.
    first(open_study(storage))
    assert len(optuna.load_study(study_name=STUDY_NAME, storage=storage).trials) == 6


def test_first_trial_sampled_leaves_every_trial_to_the_sampler() -> None:
    from tuning.config import SearchConfig
    from tuning.tuner import opening

    config = SearchConfig.from_flat({"first_trial": "sampled"})
    assert opening(config, load_space("default"), None) is None
    # Every trial of head-only is plain already: nothing is enqueued.
    assert opening(SearchConfig(), load_space("head-only"), None) is None
