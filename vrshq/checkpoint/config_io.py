"""JSON (de)serialisation of the frozen config dataclasses, generic over their annotations.

Used for the ``config.json`` of a checkpoint folder (:mod:`vrshq.checkpoint`), so the config
classes need no JSON code of their own: nested dataclasses, tuples, enums, ``torch.dtype`` and
``X | None`` fields round-trip. A ``to_dict``/``from_dict`` method on a class takes precedence.
Fields named ``*storage_options`` may hold credentials and are written as null.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["config_from_dict", "config_to_dict"]


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a (nested) config dataclass; tuples become lists, enums their value,
    ``torch.dtype`` its name. A ``to_dict()`` method on the config wins if it has one."""
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config must be a dataclass instance (e.g. VrshqConfig), got {type(config).__name__}")
    return {
        # Storage options may hold credentials: never write them into a checkpoint.
        f.name: None if f.name.endswith("storage_options") else _to_jsonable(getattr(config, f.name))
        for f in dataclasses.fields(config)
    }


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"config value {value!r} of type {type(value).__name__} cannot be written to JSON")


def config_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass of type ``cls`` from :func:`config_to_dict` output.

    Field types come from the dataclass annotations; unknown keys raise so that a config written by
    a newer version is not silently truncated. A ``from_dict`` classmethod on ``cls`` wins.
    """
    if hasattr(cls, "from_dict"):
        return cls.from_dict(data)
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; known fields: {sorted(names)}")
    return cls(**{k: _from_jsonable(hints.get(k, Any), v) for k, v in data.items()})


def _from_jsonable(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        for candidate in non_none:  # first type that accepts the value
            try:
                return _from_jsonable(candidate, value)
            except (TypeError, ValueError):
                continue
        return value
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return config_from_dict(tp, value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if tp is torch.dtype:
        dtype = getattr(torch, str(value), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown torch dtype {value!r}")
        return dtype
    if origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_jsonable(args[0], v) for v in value)
        if args and len(args) == len(value):
            return tuple(_from_jsonable(a, v) for a, v in zip(args, value))
        return tuple(value)
    if origin in (list, Sequence) and isinstance(value, list):
        return [_from_jsonable(args[0], v) for v in value] if args else list(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise TypeError(f"expected {tp.__name__}, got {value!r}")
    return value


