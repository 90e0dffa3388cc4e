"""The search space as plain data: each hyperparameter declared once.

A `Parameter` says how one hyperparameter of `core.hyperparameters.Hyperparameters`
varies: a float or int range with INCLUSIVE bounds (optionally log-scaled), a list of
choices, or a fixed value, optionally active only when a `Condition` on an earlier
parameter holds. A `SearchSpace` is an ordered tuple of parameters.

Everything is validated on construction, against the names, types and hard limits of
`Hyperparameters`, so that a bad space fails before Ray, Optuna or Keras is imported.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core.hyperparameters import HyperparameterError, Hyperparameters

KINDS = ("float", "int", "categorical", "fixed")

# Which kinds each hyperparameter type may be declared with.
_KINDS_BY_FIELD_TYPE: dict[type, tuple[str, ...]] = {
    float: ("float", "categorical", "fixed"),
    int: ("int", "categorical", "fixed"),
    str: ("categorical", "fixed"),
}

_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_ORDERING_OPERATORS = frozenset({">", ">=", "<", "<="})
# Two-character operators come first in the alternation so ">=" is not read as ">".
_CONDITION_PATTERN = re.compile(r"^\s*([A-Za-z_]\w*)\s*(>=|<=|==|!=|>|<)\s*(.*?)\s*$")
_QUOTED_PATTERN = re.compile(r"""^(?:'([^']*)'|"([^"]*)")$""")
_BARE_WORD_PATTERN = re.compile(r"^[A-Za-z_][\w.-]*$")


class SpaceError(ValueError):
    """A search space is malformed; the message names the parameter, key and value."""

    @classmethod
    def for_key(cls, parameter: str, key: str, value: Any, problem: str) -> SpaceError:
        """Builds the error for one bad key of one parameter.

        Args:
            parameter: The hyperparameter being declared.
            key: The spec key at fault (``low``, ``when``, ...).
            value: The offending value (None when the key is missing).
            problem: What is wrong, and if possible what would be right.

        Returns:
            The error, with a message naming all three.
        """
        return cls(f"parameter {parameter!r}, key {key!r}, value {value!r}: {problem}")


def hyperparameter_type(name: str) -> type:
    """The Python type (float, int or str) of a hyperparameter a space may declare.

    Args:
        name: A field name of `Hyperparameters`.

    Returns:
        The field's type.

    Raises:
        SpaceError: If ``name`` is not a hyperparameter; the message lists the valid names.
    """
    if not isinstance(name, str) or name not in Hyperparameters.names():
        raise SpaceError(
            f"parameter {name!r}: unknown hyperparameter; valid names: "
            f"{', '.join(Hyperparameters.names())}"
        )
    return Hyperparameters.field_type(name)


@dataclass(frozen=True)
class Condition:
    """When a parameter is active: ``<parameter> <operator> <value>``.

    Attributes:
        parameter: The earlier parameter the condition reads.
        operator: One of ``>``, ``>=``, ``<``, ``<=``, ``==``, ``!=``.
        value: What the parameter is compared with; ordering operators need a number.
    """

    parameter: str
    operator: str
    value: int | float | str

    def __post_init__(self) -> None:
        if self.operator not in _OPERATORS:
            raise SpaceError(
                f"condition {self}: unknown operator {self.operator!r}; "
                f"expected one of {', '.join(_OPERATORS)}"
            )
        if not isinstance(self.parameter, str) or not self.parameter.isidentifier():
            raise SpaceError(f"condition {self}: {self.parameter!r} is not a parameter name")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float, str)):
            raise SpaceError(f"condition {self}: value {self.value!r} is not a number or string")
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise SpaceError(f"condition {self}: value {self.value!r} is not finite")
        if isinstance(self.value, str) and self.operator in _ORDERING_OPERATORS:
            raise SpaceError(
                f"condition {self}: operator {self.operator!r} needs a number, got {self.value!r}"
            )

    @classmethod
    def parse(cls, text: str) -> Condition:
        """Reads a condition such as ``"unfreeze_blocks > 0"`` or ``"pooling == 'avg'"``.

        Args:
            text: ``<parameter> <operator> <value>``; the value is an int, a float, a
                quoted string or a bare word (read as a string).

        Returns:
            The condition.

        Raises:
            SpaceError: If the text is not of that form; the message quotes it.
        """
        if not isinstance(text, str):
            raise SpaceError(f"condition {text!r}: expected a string like 'unfreeze_blocks > 0'")
        match = _CONDITION_PATTERN.match(text)
        if match is None:
            raise SpaceError(
                f"condition {text!r}: expected '<parameter> <operator> <value>' with an "
                f"operator among {', '.join(_OPERATORS)}, e.g. 'unfreeze_blocks > 0'"
            )
        parameter, operator_text, value_text = match.groups()
        value = _parse_condition_value(value_text)
        if value is None:
            raise SpaceError(
                f"condition {text!r}: cannot read the value {value_text!r}; expected a "
                "finite number, a quoted string or a bare word"
            )
        return cls(parameter, operator_text, value)

    def holds(self, values: Mapping[str, Any]) -> bool:
        """Whether the condition holds for the values of a (partial) trial.

        Args:
            values: Parameter values chosen so far.

        Returns:
            False when the parameter is absent (inactive), else the comparison.
        """
        if self.parameter not in values or values[self.parameter] is None:
            return False
        try:
            return bool(_OPERATORS[self.operator](values[self.parameter], self.value))
        except TypeError:
            # A value that cannot be compared (a string against a number) cannot satisfy
            # it; SearchSpace rejects such conditions, so this only guards foreign input.
            return False

    def __str__(self) -> str:
        return f"{self.parameter} {self.operator} {self.value!r}"


def _parse_condition_value(text: str) -> int | float | str | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return number if math.isfinite(number) else None
    quoted = _QUOTED_PATTERN.match(text)
    if quoted is not None:
        return quoted.group(1) if quoted.group(1) is not None else quoted.group(2)
    if _BARE_WORD_PATTERN.match(text):
        return text
    return None


@dataclass(frozen=True)
class Parameter:
    """How one hyperparameter varies across trials.

    Attributes:
        name: A field name of `Hyperparameters`.
        kind: ``"float"``, ``"int"``, ``"categorical"`` or ``"fixed"``.
        low: Lowest value of a float or int range (inclusive).
        high: Highest value of a float or int range (inclusive).
        log: Whether a float or int range is sampled log-uniformly (needs low > 0).
        choices: The values of a categorical parameter.
        value: The value of a fixed parameter.
        condition: When the parameter is active; None means always.
    """

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    value: Any = None
    condition: Condition | None = None

    def __post_init__(self) -> None:
        field_type = hyperparameter_type(self.name)
        if self.kind not in KINDS:
            raise SpaceError.for_key(
                self.name, "type", self.kind, f"unknown type; expected one of {', '.join(KINDS)}"
            )
        allowed_kinds = _KINDS_BY_FIELD_TYPE[field_type]
        if self.kind not in allowed_kinds:
            raise SpaceError.for_key(
                self.name,
                "type",
                self.kind,
                f"{self.name} is a {field_type.__name__} hyperparameter; "
                f"use one of {', '.join(allowed_kinds)}",
            )
        if not isinstance(self.log, bool):
            raise SpaceError.for_key(self.name, "log", self.log, "expected true or false")
        self._check_unused_fields()
        if self.kind in ("float", "int"):
            self._check_range(field_type)
        elif self.kind == "categorical":
            self._check_choices(field_type)
        else:
            if self.value is None:
                raise SpaceError.for_key(self.name, "value", None, "required for type 'fixed'")
            value = _coerce(self.name, "value", self.value, field_type)
            _check_hard_limits(self.name, "value", value)
            object.__setattr__(self, "value", value)
        if self.condition is not None and not isinstance(self.condition, Condition):
            raise SpaceError.for_key(self.name, "when", self.condition, "expected a Condition")

    def _check_unused_fields(self) -> None:
        unused: dict[str, Any] = {}
        if self.kind != "categorical":
            unused["choices"] = self.choices if self.choices != () else None
        if self.kind != "fixed":
            unused["value"] = self.value
        if self.kind not in ("float", "int"):
            unused.update(low=self.low, high=self.high, log=self.log or None)
        for key, value in unused.items():
            if value is not None:
                raise SpaceError.for_key(self.name, key, value, f"not used by type {self.kind!r}")

    def _check_range(self, field_type: type) -> None:
        bounds: dict[str, Any] = {}
        for key in ("low", "high"):
            raw = getattr(self, key)
            if raw is None:
                raise SpaceError.for_key(self.name, key, None, f"required for type {self.kind!r}")
            bounds[key] = _coerce(self.name, key, raw, field_type)
        low, high = bounds["low"], bounds["high"]
        if low > high:
            raise SpaceError.for_key(self.name, "low", low, f"greater than high {high!r}")
        if self.log and low <= 0:
            raise SpaceError.for_key(self.name, "low", low, "must be > 0 when log is true")
        for key, bound in bounds.items():
            _check_hard_limits(self.name, key, bound)
            object.__setattr__(self, key, bound)

    def _check_choices(self, field_type: type) -> None:
        if isinstance(self.choices, (str, bytes)) or not isinstance(self.choices, (tuple, list)):
            raise SpaceError.for_key(self.name, "choices", self.choices, "expected a list")
        if not self.choices:
            raise SpaceError.for_key(
                self.name, "choices", self.choices, "must name at least one value"
            )
        choices = tuple(
            _coerce(self.name, "choices", choice, field_type) for choice in self.choices
        )
        for choice in choices:
            _check_hard_limits(self.name, "choices", choice)
        if len(set(choices)) != len(choices):
            raise SpaceError.for_key(self.name, "choices", self.choices, "contains duplicates")
        object.__setattr__(self, "choices", choices)

    def values_grid(self) -> list[Any] | None:
        """The finite values this parameter can take when active.

        Returns:
            Every integer of an int range (bounds included), the choices, or the
            fixed value; None for a float range.
        """
        if self.kind == "int":
            assert self.low is not None and self.high is not None
            return list(range(int(self.low), int(self.high) + 1))
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "fixed":
            return [self.value]
        return None

    def to_spec(self) -> Any:
        """The YAML form of this parameter: a plain scalar when fixed and unconditional.

        Returns:
            A scalar or a mapping with keys among type, low, high, log, choices, value, when.
        """
        if self.kind == "fixed" and self.condition is None:
            return self.value
        spec: dict[str, Any] = {"type": self.kind}
        if self.kind in ("float", "int"):
            spec["low"] = self.low
            spec["high"] = self.high
            if self.log:
                spec["log"] = True
        elif self.kind == "categorical":
            spec["choices"] = list(self.choices)
        else:
            spec["value"] = self.value
        if self.condition is not None:
            spec["when"] = str(self.condition)
        return spec


def _coerce(name: str, key: str, value: Any, field_type: type) -> Any:
    """Checks a value's type against the hyperparameter's; ints become floats for floats."""
    if field_type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpaceError.for_key(name, key, value, "expected a number")
        if not math.isfinite(value):
            raise SpaceError.for_key(name, key, value, "expected a finite number")
        return float(value)
    if field_type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpaceError.for_key(name, key, value, "expected an integer")
        return value
    if not isinstance(value, str):
        raise SpaceError.for_key(name, key, value, "expected a string")
    return value


def _check_hard_limits(name: str, key: str, value: Any) -> None:
    try:
        Hyperparameters(**{name: value})
    except HyperparameterError as error:
        raise SpaceError.for_key(name, key, value, f"outside the hard limits ({error})") from error


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of parameters; a condition may only read an earlier parameter.

    Attributes:
        parameters: The parameters, in declaration order.
    """

    parameters: tuple[Parameter, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", tuple(self.parameters))
        for parameter in self.parameters:
            if not isinstance(parameter, Parameter):
                raise SpaceError(f"search space entry {parameter!r}: expected a Parameter")
        all_names = [parameter.name for parameter in self.parameters]
        declared: dict[str, Parameter] = {}
        for parameter in self.parameters:
            if parameter.name in declared:
                raise SpaceError(f"parameter {parameter.name!r}: declared twice")
            if parameter.condition is not None:
                _check_condition(parameter, parameter.condition, declared, all_names)
            declared[parameter.name] = parameter

    def names(self) -> tuple[str, ...]:
        """The declared parameter names, in order."""
        return tuple(parameter.name for parameter in self.parameters)

    def get(self, name: str) -> Parameter | None:
        """The parameter called ``name``, or None if the space does not declare it."""
        for parameter in self.parameters:
            if parameter.name == name:
                return parameter
        return None

    def possible_values(self, name: str, default: Any) -> list[Any] | None:
        """The finite set of values a hyperparameter can take in some trial.

        Args:
            name: The hyperparameter.
            default: The value a trial uses when the parameter is absent or inactive.

        Returns:
            Sorted distinct values, including ``default`` when the parameter is absent
            or may be inactive; None when it is a float range that can be active.
        """
        parameter = self.get(name)
        if parameter is None:
            return [default]
        values: list[Any] = []
        if self._can_be_active(parameter):
            grid = parameter.values_grid()
            if grid is None:
                return None
            values.extend(grid)
        if self._can_be_inactive(parameter):
            values.append(default)
        distinct = list(dict.fromkeys(values))
        try:
            return sorted(distinct)
        except TypeError:
            return distinct

    def unfreeze_block_values(self) -> list[int]:
        """Sorted values of ``unfreeze_blocks`` some trial may use (``[0]`` when absent)."""
        values = self.possible_values("unfreeze_blocks", Hyperparameters().unfreeze_blocks)
        # unfreeze_blocks is an int hyperparameter, so it is never a continuous range.
        assert values is not None
        return [int(value) for value in values]

    def may_augment(self) -> bool:
        """Whether ``augmentation`` can be greater than 0 in some trial."""
        default = Hyperparameters().augmentation
        parameter = self.get("augmentation")
        if parameter is None:
            return default > 0
        if self._can_be_inactive(parameter) and default > 0:
            return True
        if not self._can_be_active(parameter):
            return False
        if parameter.kind == "float":
            assert parameter.high is not None
            return parameter.high > 0
        grid = parameter.values_grid()
        assert grid is not None
        return any(value > 0 for value in grid)

    def augmentation_levels(self) -> list[float]:
        """The augmentation strengths above 0 that some trial may use.

        Augmented trials train on cached augmented views, computed once per
        strength, so the strength must be a finite choice.

        Raises:
            SpaceError: When ``augmentation`` is a float range that can be active.
        """
        values = self.possible_values("augmentation", Hyperparameters().augmentation)
        if values is None:
            raise SpaceError.for_key(
                "augmentation",
                "type",
                "float",
                "augmented views are cached per strength, so augmentation must be a finite "
                "choice, e.g. {type: categorical, choices: [0, 0.25, 0.5, 0.75, 1]}",
            )
        return [float(value) for value in values if value > 0]

    def plain_values(self) -> dict[str, Any] | None:
        """The values that put a trial on the plain top cut: no augmentation, head only.

        Such a trial needs only the features built first, so it can start before any
        augmented view exists. Only the parameters the space varies are named (a
        parameter it leaves out, or fixes, is 0 already or rules the trial out).

        Returns:
            ``augmentation`` and ``unfreeze_blocks`` at 0, as the space spells 0, for
            those it varies; None when no trial of this space can be plain.
        """
        defaults = Hyperparameters()
        values: dict[str, Any] = {}
        for name in ("augmentation", "unfreeze_blocks"):
            parameter = self.get(name)
            if parameter is None or parameter.kind == "fixed":
                possible = self.possible_values(name, getattr(defaults, name))
                if possible != [0]:  # 0.0 == 0
                    return None
                continue
            zero = _zero_of(parameter) if self._can_be_active(parameter) else None
            if zero is None:
                return None
            values[name] = zero
        return values

    def validate_for_backbone(self, num_blocks: int, backbone: str) -> None:
        """Checks that no trial unfreezes more blocks than the backbone has.

        Args:
            num_blocks: How many blocks the backbone can unfreeze.
            backbone: The backbone's name, for the message.

        Raises:
            SpaceError: Naming the backbone, ``num_blocks`` and the largest bad value.
        """
        too_deep = [value for value in self.unfreeze_block_values() if value > num_blocks]
        if not too_deep:
            return
        parameter = self.get("unfreeze_blocks")
        keys = {"int": "high", "categorical": "choices", "fixed": "value"}
        key = keys.get(parameter.kind, "value") if parameter is not None else "value"
        raise SpaceError.for_key(
            "unfreeze_blocks",
            key,
            max(too_deep),
            f"backbone {backbone!r} has only {num_blocks} blocks to unfreeze",
        )

    def to_dict(self) -> dict[str, Any]:
        """The YAML form: parameter name -> spec; `space_from_mapping` reads it back."""
        return {parameter.name: parameter.to_spec() for parameter in self.parameters}

    def _can_be_active(self, parameter: Parameter) -> bool:
        condition = parameter.condition
        if condition is None:
            return True
        parent = self.get(condition.parameter)
        if parent is None or not self._can_be_active(parent):
            return False
        grid = parent.values_grid()
        if grid is None:
            # A float parent: assume some value in its range satisfies the condition.
            return True
        return any(condition.holds({parent.name: value}) for value in grid)

    def _can_be_inactive(self, parameter: Parameter) -> bool:
        condition = parameter.condition
        if condition is None:
            return False
        parent = self.get(condition.parameter)
        if parent is None or self._can_be_inactive(parent):
            return True
        grid = parent.values_grid()
        if grid is None:
            # A float parent: assume some value in its range fails the condition.
            return True
        return any(not condition.holds({parent.name: value}) for value in grid)


def _check_condition(
    parameter: Parameter,
    condition: Condition,
    declared: Mapping[str, Parameter],
    all_names: list[str],
) -> None:
    name, parent = parameter.name, condition.parameter
    text = str(condition)
    if parent == name:
        raise SpaceError.for_key(name, "when", text, "a parameter cannot depend on itself")
    if parent not in Hyperparameters.names():
        raise SpaceError.for_key(
            name,
            "when",
            text,
            f"unknown parameter {parent!r}; valid names: {', '.join(Hyperparameters.names())}",
        )
    if parent not in declared:
        where = "after it" if parent in all_names else "nowhere in this space"
        raise SpaceError.for_key(
            name,
            "when",
            text,
            f"{parent!r} must be declared before {name!r}, but is declared {where}",
        )
    parent_type = Hyperparameters.field_type(parent)
    if parent_type is str and not isinstance(condition.value, str):
        raise SpaceError.for_key(
            name, "when", text, f"{parent!r} is a string; compare it with a string"
        )
    if parent_type is not str and isinstance(condition.value, str):
        raise SpaceError.for_key(
            name, "when", text, f"{parent!r} is a number; compare it with a number"
        )


def _zero_of(parameter: Parameter) -> Any:
    """0 as ``parameter`` can take it (a choice that equals 0, or 0 in its range), else None."""
    grid = parameter.values_grid()
    if grid is None:
        assert parameter.low is not None and parameter.high is not None
        return 0.0 if parameter.low <= 0 <= parameter.high else None
    return next((value for value in grid if value == 0), None)
