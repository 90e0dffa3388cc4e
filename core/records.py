"""Frozen dataclasses to and from JSON-ready dicts, checked against their own type hints.

Every file format bottletune writes (``results.json``, ``best.json``,
``model_info.json``, ``search.json``) is a dataclass; its fields are the
format. ``to_dict`` and ``from_dict`` here walk those fields, so a format is
spelled once, and a file that does not match is an error naming the file and
the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class RecordError(ValueError):
    """A mapping does not fit the record it is read as; the message names the source and key."""


def to_dict(record: Any) -> dict[str, Any]:
    """A dataclass as a dict of JSON types: tuples become lists, nested records dicts."""
    return {field.name: _plain(getattr(record, field.name)) for field in dataclasses.fields(record)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_dict_method = getattr(value, "to_dict", None)
        return to_dict_method() if callable(to_dict_method) else to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


def from_dict(cls: type[T], data: Any, source: str, *, ignore: frozenset[str] = frozenset()) -> T:
    """Builds ``cls`` from ``data``, checking every field against its annotation.

    Fields with defaults may be missing (files written before the field
    existed); unknown keys are errors, except those in ``ignore``. A nested
    record type with a ``from_mapping`` classmethod (``Hyperparameters``) is
    built through it, others field by field.

    Raises:
        RecordError: naming ``source`` and the missing, unknown or mistyped key.
    """
    if not isinstance(data, Mapping):
        raise RecordError(f"{source}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields) - ignore)
    if unknown:
        raise RecordError(f"{source}: unknown key(s) {', '.join(unknown)}")
    missing = [
        name
        for name, field in fields.items()
        if name not in data
        and field.default is dataclasses.MISSING
        and field.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RecordError(f"{source}: missing key(s) {', '.join(missing)}")
    values = {
        name: _convert(hints[name], data[name], f"{source}: {name}")
        for name in fields
        if name in data
    }
    try:
        return cls(**values)
    except ValueError as error:
        raise RecordError(f"{source}: {error}") from error


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    arguments = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        for option in (a for a in arguments if a is not type(None)):
            try:
                return _convert(option, value, where)
            except RecordError:
                continue
        raise RecordError(f"{where}={value!r}: expected {_name(hint)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise RecordError(f"{where}={value!r}: expected a list")
        item_hint = arguments[0] if arguments else Any
        items = [_convert(item_hint, item, f"{where}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise RecordError(f"{where}={value!r}: expected an object")
        item_hint = arguments[1] if len(arguments) == 2 else Any
        return {str(k): _convert(item_hint, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        from_mapping = getattr(hint, "from_mapping", None)
        if not callable(from_mapping):
            return from_dict(typing.cast(type, hint), value, where)
        if not isinstance(value, Mapping):
            raise RecordError(f"{where}={value!r}: expected an object")
        try:
            return from_mapping(value)
        except ValueError as error:
            raise RecordError(f"{where}: {error}") from error
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise RecordError(f"{where}={value!r}: expected {_name(hint)}")


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
