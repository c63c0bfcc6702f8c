"""Config checks: a config read from JSON (ours, or a peer's ``config.json``) becomes its dataclass field by field,
and the first problem is one line naming the field (``config.text.width: expected int, got a string "four"``).

Every field's value is checked against its annotation (``int``, ``float``, ``bool``, ``str``, ``X | None``,
``Literal``, ``list[X]``, ``tuple``, ``dict``, nested dataclasses, recursively), numbers are finite and counts not
negative. A dataclass that describes a peer's config (Hugging Face, open_clip) sets ``extra_fields_allowed = True``:
the fields it names are checked, the many others such a file carries are left alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any

from multimodal.errors import CheckpointError


def config_to_dict(config: Any) -> dict:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


def config_from_dict(cls: type, data: Any) -> Any:
    """Build ``cls.config_class`` from a dict (``config.json``'s ``"config"``), checked field by field.

    Every field's value is checked against its annotation (``int``, ``float``, ``bool``, ``str``, ``X | None``,
    ``Literal``, ``list[X]``, ``tuple``, ``dict``, nested dataclasses, recursively), numbers are finite and
    counts not negative; the first problem is a one-line ``CheckpointError`` naming the field
    (``config.text.width: expected int, got a string "four"``)."""
    return _dataclass_from(cls.config_class, data, "config")


def fields_from_dict(fields_cls: type, data: Any, where: str = "") -> Any:
    """``fields_cls`` (a dataclass describing the fields of a peer's config that we read) from parsed JSON,
    checked as ``config_from_dict`` checks ours; ``where`` prefixes the field names in the message (``""``: the
    fields are named bare, ``n_embd: expected int, got a string "four"``)."""
    return _dataclass_from(fields_cls, data, where)


def _dataclass_from(config_cls: type, data: Any, where: str) -> Any:
    if isinstance(data, config_cls):
        return data
    if hasattr(config_cls, "upgrade") and isinstance(data, dict):
        data = config_cls.upgrade(dict(data))  # older exports: one explicit conversion per head
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{where or 'config'}: expected an object with the fields of {config_cls.__name__}, got {describe(data)}"
        )
    fields = dataclasses.fields(config_cls)
    unknown = [k for k in data if k not in {f.name for f in fields}]
    if unknown and not getattr(config_cls, "extra_fields_allowed", False):
        raise CheckpointError(f"{where}: fields {sorted(map(str, unknown))} unknown to {config_cls.__name__}")
    missing = [f.name for f in fields if f.name not in data and _required(f)]
    if missing:
        raise CheckpointError(f"{_join(where, missing[0])}: missing (a required field of {config_cls.__name__})")
    try:
        hints = typing.get_type_hints(config_cls)
    except (NameError, TypeError):  # an annotation that does not resolve: check nothing rather than guess
        hints = {}
    kwargs = {
        f.name: _checked(data[f.name], hints.get(f.name, Any), _join(where, f.name)) for f in fields if f.name in data
    }
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError, AssertionError, KeyError, ZeroDivisionError) as e:
        raise CheckpointError(
            f"{where or 'config'}: invalid {config_cls.__name__}: {str(e).splitlines()[0] if str(e) else e!r}"
        ) from None


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING and field.init


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def describe(value: Any) -> str:
    """A JSON value as a message names it: ``a string "four"``, ``a list``, ``null``."""
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    kind = names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)
    return kind if text == type(value).__name__ else f"{kind} {text[:60]}"


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _checked(value: Any, tp: Any, where: str) -> Any:
    """``value`` (parsed JSON) as the annotation ``tp`` wants it, or a ``CheckpointError`` naming ``where``."""

    def wrong() -> CheckpointError:
        return CheckpointError(f"{where}: expected {_type_name(tp)}, got {describe(value)}")

    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and dataclasses.is_dataclass(options[0]) and isinstance(value, dict):
            return _checked(value, options[0], where)  # an optional object: the error names the field inside it
        for option in (a for a in args if a is not type(None)):
            try:
                return _checked(value, option, where)
            except CheckpointError:
                continue
        raise wrong()
    if origin is typing.Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args if a == value):
            raise wrong()
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass_from(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong()
        if value < 0:
            raise CheckpointError(f"{where}: must not be negative, got {value}")
        return value
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise wrong()
        if not math.isfinite(value):
            raise CheckpointError(f"{where}: must be a finite number, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    if tp is list or origin is list:
        if not isinstance(value, list):
            raise wrong()
        return [_checked(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if tp is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise wrong()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_checked(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if args:
            if len(args) != len(value):
                raise CheckpointError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_checked(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return tuple(_checked(v, Any, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise wrong()
        return value
    return value  # an annotation this checker does not know: the config class's own checks apply
