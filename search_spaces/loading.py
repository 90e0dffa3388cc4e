"""Reading search spaces from presets, YAML files and mappings.

The YAML form is a mapping of parameter name -> spec, in declaration order::

    dropout: {type: float, low: 0.1, high: 0.7}
    l2: {type: float, low: 1.0e-6, high: 1.0e-2, log: true}
    unfreeze_blocks: {type: int, low: 0, high: 3}
    finetune_learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true,
                             when: "unfreeze_blocks > 0"}
    dense_units: {type: categorical, choices: [128, 256, 512]}
    l1: 0.0          # a plain scalar is a fixed value
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from search_spaces.space import (
    KINDS,
    Condition,
    Parameter,
    SearchSpace,
    SpaceError,
    hyperparameter_type,
)

SPEC_KEYS = ("type", "low", "high", "log", "choices", "value", "when")

_KEYS_BY_KIND: dict[str, tuple[str, ...]] = {
    "float": ("type", "low", "high", "log", "when"),
    "int": ("type", "low", "high", "log", "when"),
    "categorical": ("type", "choices", "when"),
    "fixed": ("type", "value", "when"),
}
_REQUIRED_BY_KIND: dict[str, tuple[str, ...]] = {
    "float": ("low", "high"),
    "int": ("low", "high"),
    "categorical": ("choices",),
    "fixed": ("value",),
}

_FINE_TUNING = "unfreeze_blocks > 0"
AUGMENTATION_LEVELS = [0.0, 0.25, 0.5, 0.75, 1.0]

PRESETS: dict[str, dict[str, Any]] = {
    # Augmentation is a choice of levels: each level's augmented views are
    # computed once and shared by every trial that picks it, in both phases.
    "default": {
        "dropout": {"type": "float", "low": 0.0, "high": 0.7},
        "l2": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
        "unfreeze_blocks": {"type": "int", "low": 0, "high": 3},
        "augmentation": {"type": "categorical", "choices": AUGMENTATION_LEVELS},
        "head_learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "finetune_learning_rate": {
            "type": "float",
            "low": 1.0e-5,
            "high": 1.0e-3,
            "log": True,
            "when": _FINE_TUNING,
        },
        "dense_units": {"type": "categorical", "choices": [128, 256, 512]},
    },
    # The write-up's own advice: fine-tune block 5, perhaps block 4 too; more
    # dropout, L2 decay and augmentation. Three strengths keep the cached views
    # small (about 4.3 GB in float16 with 4 views, 2000 images at 150 px).
    "recipe": {
        "dropout": {"type": "float", "low": 0.2, "high": 0.7},
        "l2": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
        "unfreeze_blocks": {"type": "int", "low": 0, "high": 2},
        "augmentation": {"type": "categorical", "choices": [0.0, 0.5, 1.0]},
        "head_learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "finetune_learning_rate": {
            "type": "float",
            "low": 1.0e-5,
            "high": 1.0e-3,
            "log": True,
            "when": _FINE_TUNING,
        },
        "dense_units": {"type": "categorical", "choices": [128, 256, 512]},
    },
    "head-only": {
        "dropout": {"type": "float", "low": 0.0, "high": 0.7},
        "l2": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
        "unfreeze_blocks": 0,
        "head_learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "dense_units": {"type": "categorical", "choices": [128, 256, 512]},
    },
}


def space_from_mapping(data: Mapping[str, Any], source: str = "<space>") -> SearchSpace:
    """Builds and validates a search space from its YAML form.

    Args:
        data: Parameter name -> spec (a mapping with keys among `SPEC_KEYS`, or a plain
            scalar for a fixed value). Order matters: a ``when`` condition may only
            read a parameter declared earlier.
        source: Where the mapping came from (a file path, a preset), for messages.

    Returns:
        The search space.

    Raises:
        SpaceError: On the first problem, with ``source``, the parameter, the key and
            the bad value in the message.
    """
    if not isinstance(data, Mapping):
        raise SpaceError(
            f"{source}: expected a mapping of parameter name to spec, "
            f"got {type(data).__name__} {data!r}"
        )
    try:
        parameters = tuple(_parameter_from_spec(name, spec) for name, spec in data.items())
        return SearchSpace(parameters)
    except SpaceError as error:
        raise SpaceError(f"{source}: {error}") from error


def load_space(source: str | os.PathLike[str] | Mapping[str, Any]) -> SearchSpace:
    """Loads a search space from a preset name, a YAML file or a mapping.

    A string is looked up among `PRESETS` first, then read as a file path.

    Args:
        source: A preset name, a path to a YAML file, or the YAML form as a mapping.

    Returns:
        The validated search space.

    Raises:
        SpaceError: If ``source`` is neither a preset nor an existing file (the message
            lists the presets), the file is not valid YAML, or the space is invalid
            (the message starts with the file path).
    """
    if isinstance(source, Mapping):
        return space_from_mapping(source, "<mapping>")
    if not isinstance(source, (str, os.PathLike)):
        raise SpaceError(
            f"search space source {source!r}: expected a preset name, a path or a mapping"
        )
    if isinstance(source, str) and source in PRESETS:
        return space_from_mapping(PRESETS[source], f"preset {source!r}")
    path = Path(source)
    if not path.is_file():
        raise SpaceError(
            f"search space {os.fspath(source)!r} is neither a preset "
            f"({', '.join(PRESETS)}) nor an existing YAML file"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise SpaceError(f"{path}: cannot read the search space: {error}") from error
    return space_from_mapping(data, str(path))


def _parameter_from_spec(name: Any, spec: Any) -> Parameter:
    field_type = hyperparameter_type(name)
    if not isinstance(spec, Mapping):
        if spec is None or isinstance(spec, (list, tuple, set)):
            raise SpaceError(
                f"parameter {name!r}, value {spec!r}: expected a fixed scalar value or a "
                f"mapping with keys among {', '.join(SPEC_KEYS)}"
            )
        return Parameter(name, "fixed", value=_read_number(spec, field_type))
    for key, value in spec.items():
        if key not in SPEC_KEYS:
            raise SpaceError.for_key(
                name, key, value, f"unknown key; allowed keys: {', '.join(SPEC_KEYS)}"
            )
    if "type" not in spec:
        raise SpaceError.for_key(name, "type", None, f"required; one of {', '.join(KINDS)}")
    kind = spec["type"]
    if kind not in KINDS:
        raise SpaceError.for_key(name, "type", kind, f"unknown type; one of {', '.join(KINDS)}")
    for key, value in spec.items():
        if key not in _KEYS_BY_KIND[kind]:
            raise SpaceError.for_key(
                name,
                key,
                value,
                f"not allowed for type {kind!r}; allowed keys: {', '.join(_KEYS_BY_KIND[kind])}",
            )
    for key in _REQUIRED_BY_KIND[kind]:
        if key not in spec:
            raise SpaceError.for_key(name, key, None, f"required for type {kind!r}")
    choices = spec.get("choices", ())
    if isinstance(choices, (str, bytes)) or not isinstance(choices, (list, tuple)):
        raise SpaceError.for_key(name, "choices", choices, "expected a list")
    return Parameter(
        name,
        kind,
        low=_read_number(spec.get("low"), field_type),
        high=_read_number(spec.get("high"), field_type),
        log=spec.get("log", False),
        choices=tuple(_read_number(choice, field_type) for choice in choices),
        value=_read_number(spec.get("value"), field_type),
        condition=_read_condition(name, spec.get("when")),
    )


def _read_number(value: Any, field_type: type) -> Any:
    # yaml.safe_load follows YAML 1.1, which reads an exponent without a dot (1e-5) as
    # a string, so numeric strings are accepted where the hyperparameter is a float.
    if field_type is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _read_condition(name: str, text: Any) -> Condition | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise SpaceError.for_key(
            name, "when", text, "expected a condition string like 'unfreeze_blocks > 0'"
        )
    try:
        return Condition.parse(text)
    except SpaceError as error:
        raise SpaceError(f"parameter {name!r}, key 'when': {error}") from error
