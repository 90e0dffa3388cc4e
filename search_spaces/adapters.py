"""Adapters from a `SearchSpace` to Ray Tune, Optuna and KerasTuner.

Our int and float bounds are inclusive. Optuna's and KerasTuner's are too; Ray Tune's
integer upper bound is exclusive, so `to_ray_tune` adds one. Ray, Optuna and KerasTuner
are imported inside the adapters so that importing `search_spaces` stays light.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from search_spaces.space import Parameter, SearchSpace, SpaceError

if TYPE_CHECKING:
    import keras_tuner
    import optuna

# A chain of KerasTuner conditional scopes, outermost first: (parent name, parent values).
_ScopeChain = list[tuple[str, list[Any]]]


def to_ray_tune(space: SearchSpace) -> dict[str, Any]:
    """Builds a Ray Tune ``param_space`` from a search space.

    Floats become ``tune.uniform`` / ``tune.loguniform``; ints ``tune.randint`` /
    ``tune.lograndint`` with ``high + 1``, because Ray Tune's integer upper bound is
    exclusive; categoricals ``tune.choice``; fixed parameters their plain value.

    Ray Tune's domains cannot express conditions, so conditional parameters are sampled
    in every trial; the trainer ignores them when their condition does not hold. Use
    `to_optuna` for a searcher that leaves inactive parameters out.

    Args:
        space: The search space.

    Returns:
        Parameter name -> Ray Tune domain or constant.
    """
    from ray import tune

    config: dict[str, Any] = {}
    for parameter in space.parameters:
        if parameter.kind == "float":
            low, high = _bounds(parameter)
            sample = tune.loguniform if parameter.log else tune.uniform
            config[parameter.name] = sample(float(low), float(high))
        elif parameter.kind == "int":
            low, high = _bounds(parameter)
            sample_int = tune.lograndint if parameter.log else tune.randint
            config[parameter.name] = sample_int(int(low), int(high) + 1)
        elif parameter.kind == "categorical":
            config[parameter.name] = tune.choice(list(parameter.choices))
        else:
            config[parameter.name] = parameter.value
    return config


class OptunaDefineByRun:
    """A define-by-run function for Optuna, as a picklable object.

    Ray's ``OptunaSearch`` pickles its space when it checkpoints the searcher
    (every few seconds, and for resume), so a closure would fail there.

    Args:
        space: The search space.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        values: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for parameter in self.space.parameters:
            if parameter.condition is not None and not parameter.condition.holds(values):
                continue
            name = parameter.name
            if parameter.kind == "float":
                low, high = _bounds(parameter)
                values[name] = trial.suggest_float(name, low, high, log=parameter.log)
            elif parameter.kind == "int":
                low, high = _bounds(parameter)
                values[name] = trial.suggest_int(name, int(low), int(high), log=parameter.log)
            elif parameter.kind == "categorical":
                values[name] = trial.suggest_categorical(name, list(parameter.choices))
            else:
                values[name] = constants[name] = parameter.value
        return constants


def to_optuna(space: SearchSpace) -> Callable[[optuna.trial.BaseTrial], dict[str, Any]]:
    """Builds a define-by-run function for Optuna (and Ray's ``OptunaSearch(space=...)``).

    Parameters are suggested in declaration order; one whose condition does not hold on
    the values chosen so far (fixed values included) is not suggested at all, so it is
    absent from ``trial.params``. Bounds are inclusive, as in Optuna. Any Optuna trial
    works, including ``optuna.trial.FixedTrial``.

    Args:
        space: The search space.

    Returns:
        A picklable callable that suggests the parameters on a trial and returns the
        active fixed values, which ``OptunaSearch`` merges into the trial config.
    """
    return OptunaDefineByRun(space)


def to_keras_tuner(space: SearchSpace, hp: keras_tuner.HyperParameters) -> dict[str, Any]:
    """Declares a search space on KerasTuner hyperparameters.

    Floats become ``hp.Float`` (sampling ``"log"`` or ``"linear"``), ints ``hp.Int``,
    categoricals ``hp.Choice`` and fixed values ``hp.Fixed``. A condition becomes
    ``hp.conditional_scope(parent, values)`` over the parent's finite values for which
    it holds (nested for a chain of conditions); a parameter whose condition can never
    hold is not declared.

    Args:
        space: The search space.
        hp: The ``keras_tuner.HyperParameters`` of a trial or a hypermodel build.

    Returns:
        Name -> value of the parameters active in ``hp``.

    Raises:
        SpaceError: If a condition reads a float range, which KerasTuner's conditional
            scopes (a list of parent values) cannot express.
    """
    chains: dict[str, _ScopeChain | None] = {}
    declared: list[str] = []
    for parameter in space.parameters:
        chain = _scope_chain(space, parameter, chains)
        chains[parameter.name] = chain
        if chain is None:
            continue
        with contextlib.ExitStack() as stack:
            for parent_name, parent_values in chain:
                stack.enter_context(hp.conditional_scope(parent_name, parent_values))
            _declare(hp, parameter)
        declared.append(parameter.name)
    return {name: hp.get(name) for name in declared if hp.is_active(name)}


def _scope_chain(
    space: SearchSpace, parameter: Parameter, chains: dict[str, _ScopeChain | None]
) -> _ScopeChain | None:
    """The scopes to open for a parameter, or None if it can never be active."""
    condition = parameter.condition
    if condition is None:
        return []
    parent = space.get(condition.parameter)
    # SearchSpace guarantees the parent is declared earlier, so its chain is known.
    assert parent is not None
    parent_chain = chains[parent.name]
    if parent_chain is None:
        return None
    grid = parent.values_grid()
    if grid is None:
        raise SpaceError.for_key(
            parameter.name,
            "when",
            str(condition),
            f"KerasTuner can only condition on a parameter with finite values, and "
            f"{parent.name!r} is a float range; make it categorical or int",
        )
    holding = [value for value in grid if condition.holds({parent.name: value})]
    if not holding:
        return None
    return [*parent_chain, (parent.name, holding)]


def _declare(hp: keras_tuner.HyperParameters, parameter: Parameter) -> None:
    name = parameter.name
    sampling = "log" if parameter.log else "linear"
    if parameter.kind == "float":
        low, high = _bounds(parameter)
        hp.Float(name, min_value=float(low), max_value=float(high), sampling=sampling)
    elif parameter.kind == "int":
        low, high = _bounds(parameter)
        hp.Int(name, min_value=int(low), max_value=int(high), sampling=sampling)
    elif parameter.kind == "categorical":
        hp.Choice(name, list(parameter.choices))
    else:
        hp.Fixed(name, parameter.value)


def _bounds(parameter: Parameter) -> tuple[float | int, float | int]:
    # Parameter validation guarantees both bounds for float and int kinds.
    assert parameter.low is not None and parameter.high is not None
    return parameter.low, parameter.high
