"""Optuna samplers by name, for the Optuna searcher.

``make_sampler("tpe", seed)`` is the default. CMA-ES (``"cmaes"``) and the Gaussian
process sampler (``"gp"``) model only numeric ranges: they do not handle categorical or
conditional parameters natively, and Optuna falls back to independent (random) sampling
for those. Optuna and the optional packages are imported only when a sampler is built.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

SAMPLER_NAMES = ("tpe", "random", "cmaes", "gp")


class SamplerError(ValueError):
    """A sampler name is unknown, or the sampler needs a package that is missing."""


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """Builds the Optuna sampler called ``name``.

    Args:
        name: One of `SAMPLER_NAMES`: ``"tpe"`` (multivariate, grouped TPE with a
            constant liar, suited to parallel conditional searches), ``"random"``,
            ``"cmaes"`` (needs the ``cmaes`` package) or ``"gp"`` (needs PyTorch and
            SciPy). CMA-ES and GP do not handle categorical or conditional parameters
            natively; Optuna samples those independently.
        seed: Seed of the sampler's random state; None for a random seed.

    Returns:
        The sampler.

    Raises:
        SamplerError: If ``name`` is unknown (the message lists the valid names) or
            the sampler's optional dependency is not installed (the message says how
            to install it).
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise SamplerError(f"unknown sampler {name!r}; valid names: {', '.join(SAMPLER_NAMES)}")
    return factory(seed)


def _tpe(seed: int | None) -> optuna.samplers.BaseSampler:
    import optuna

    with warnings.catch_warnings():
        # Optuna flags some of these arguments (group, in Optuna 5) as experimental.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True
        )


def _random(seed: int | None) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _cmaes(seed: int | None) -> optuna.samplers.BaseSampler:
    # Optuna imports cmaes only when the first trial is sampled; check now so that a
    # missing package fails before the search starts.
    _require("cmaes", ("cmaes",), "the cmaes package", "pip install cmaes")
    import optuna

    return optuna.samplers.CmaEsSampler(seed=seed)


def _gp(seed: int | None) -> optuna.samplers.BaseSampler:
    _require("gp", ("torch", "scipy"), "PyTorch (torch) and SciPy", "pip install torch scipy")
    import optuna

    return optuna.samplers.GPSampler(seed=seed)


def _require(sampler: str, modules: tuple[str, ...], what: str, install: str) -> None:
    missing = [module for module in modules if importlib.util.find_spec(module) is None]
    if missing:
        detail = f" (missing: {', '.join(missing)})" if len(modules) > 1 else ""
        raise SamplerError(f"sampler {sampler!r} needs {what}{detail}: {install}")


_FACTORIES: dict[str, Callable[[int | None], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "random": _random,
    "cmaes": _cmaes,
    "gp": _gp,
}


def first_suggestions(
    name: str,
    seed: int | None,
    define: Callable[[optuna.trial.Trial], object],
    count: int,
    opening: Callable[[optuna.Study], object] | None = None,
) -> list[dict[str, object]]:
    """What a fresh sampler ``name`` with ``seed`` suggests first, asked ``count`` times.

    A dry run in a throwaway in-memory study, no trial told a value: the
    search's own first trials, as long as they are asked before any is told
    (with a seed, TPE's start-up trials are its random sampler's draws).

    Args:
        opening: What the search does to its study before the first trial
            (``tuning.tuner.opening``: a warm start's trials, an enqueued
            first trial), done to the dry run's study too.
    """
    import optuna

    study = optuna.create_study(sampler=make_sampler(name, seed))
    if opening is not None:
        opening(study)
    suggestions = []
    for _ in range(count):
        trial = study.ask()
        define(trial)
        suggestions.append(dict(trial.params))
    return suggestions
