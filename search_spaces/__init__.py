"""Search spaces as plain data, with adapters to Ray Tune, Optuna and KerasTuner.

Importing this package imports neither Ray, Optuna nor Keras: the adapters import them
when called.
"""

from __future__ import annotations

from search_spaces.adapters import to_keras_tuner, to_optuna, to_ray_tune
from search_spaces.loading import PRESETS, SPEC_KEYS, load_space, space_from_mapping
from search_spaces.space import KINDS, Condition, Parameter, SearchSpace, SpaceError

__all__ = [
    "KINDS",
    "PRESETS",
    "SPEC_KEYS",
    "Condition",
    "Parameter",
    "SearchSpace",
    "SpaceError",
    "load_space",
    "space_from_mapping",
    "to_keras_tuner",
    "to_optuna",
    "to_ray_tune",
]
