"""One way to check a config: each config lists its problems, and :func:`validate` raises them all at once.

Every config dataclass of vrshq (the model configs), of ``pipelines`` (inference and training runtime
settings) and of the jobs follows the same two rules:

* ``problems(self) -> list[str]`` returns one message per problem of the config's *own* fields, each naming
  the field relative to the config (``"lr=-1: must be a finite number > 0"``); it never raises.
* it derives from :class:`Validated`, whose ``__post_init__`` calls ``validate(self)``.

:func:`validate` walks the nested configs as well, prefixes their problems with the field path
(``optim.lr=...``) and raises one :class:`ConfigError` that lists every problem, so a user fixes a bad config
in one go (torchtune's ``config.validate``). A problem that is a wrong *type* (a float where an int is needed,
a dict where a config is needed) is made with :func:`type_problem`; then the error is a
:class:`ConfigTypeError`, which is also a ``TypeError``, as Python's own checks would raise.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Window(Validated):
    ...     frames: int = 3
    ...     stride: int = 1
    ...     def problems(self):
    ...         return range_problems(self, ints=(("frames", 1), ("stride", 1)))
    >>> Window(frames=0, stride=0)  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    vrshq.validation.ConfigError: invalid Window:
      - frames=0: must be a positive int
      - stride=0: must be a positive int
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "ConfigError",
    "ConfigTypeError",
    "Validated",
    "config_problems",
    "int_problems",
    "is_int",
    "is_number",
    "range_problems",
    "required_problems",
    "type_problem",
    "validate",
]


class ConfigError(ValueError):
    """One or more problems in a configuration; ``problems`` lists each one (with its field path)."""

    def __init__(self, problems: Sequence[str] | str, *, owner: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.owner = owner
        head = f"invalid {owner}" if owner else "invalid configuration"
        super().__init__(f"{head}:\n" + "\n".join(f"  - {problem}" for problem in self.problems))


class ConfigTypeError(ConfigError, TypeError):
    """A :class:`ConfigError` in which at least one problem is a value of the wrong type."""


class _TypeProblem(str):
    """A problem message that reports a wrong type (see :func:`type_problem`)."""


def type_problem(message: str) -> str:
    """``message`` marked as a wrong-type problem: :func:`validate` then raises :class:`ConfigTypeError`."""
    return _TypeProblem(message)


def is_int(value: Any) -> bool:
    """Whether ``value`` is an int (``bool`` is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (``bool`` is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def range_problems(config: Any, *, ints: Iterable[tuple[str, int]] = (), non_negative: Iterable[str] = (),
                   positive: Iterable[str] = (), optional: Iterable[str] = ()) -> list[str]:
    """One message per field of ``config`` out of range.

    Args:
        ints: ``(name, minimum)`` of int fields (``"must be a positive int"`` for a minimum of 1).
        non_negative: fields that must be finite numbers >= 0.
        positive: fields that must be finite numbers > 0.
        optional: fields among the above that may also be None.
    """
    skip = set(optional)
    problems = []
    for name, minimum in ints:
        value = getattr(config, name)
        if value is None and name in skip:
            continue
        if not is_int(value) or value < minimum:
            rule = "a positive int" if minimum == 1 else f"an int >= {minimum}"
            problems.append(f"{name}={value!r}: must be {rule}{' or null' if name in skip else ''}")
    for names, bad, rule in ((non_negative, lambda v: v < 0, ">= 0"), (positive, lambda v: v <= 0, "> 0")):
        for name in names:
            value = getattr(config, name)
            if value is None and name in skip:
                continue
            if not is_number(value) or bad(value):
                problems.append(f"{name}={value!r}: must be a finite number {rule}{' or null' if name in skip else ''}")
    return problems


def int_problems(config: Any, names: Iterable[str], *, minimum: int = 1) -> list[str]:
    """One message per field of ``config`` in ``names`` that is not an int (a :func:`type_problem`) or is below
    ``minimum`` (the model configs' sizes: ``"hidden_size must be >= 1, got 0"``)."""
    problems = []
    for name in names:
        value = getattr(config, name)
        if not is_int(value):
            problems.append(type_problem(f"{name} must be an int, got {type(value).__name__} {value!r}"))
        elif value < minimum:
            problems.append(f"{name} must be >= {minimum}, got {value}")
    return problems


def config_problems(config: Any, *, prefix: str = "") -> list[str]:
    """Every problem of ``config`` and of the configs nested in its fields, each prefixed with its field path."""
    problems: list[str] = []
    for fld in dataclasses.fields(config):
        value = getattr(config, fld.name, None)
        if dataclasses.is_dataclass(value) and not isinstance(value, type) and hasattr(value, "problems"):
            problems += config_problems(value, prefix=f"{prefix}{fld.name}.")
    own = config.problems() if hasattr(config, "problems") else []
    for problem in own:
        path = problem if problem.startswith(prefix) else prefix + problem
        problems.append(type_problem(path) if isinstance(problem, _TypeProblem) else path)
    return problems


def validate(config: Any) -> None:
    """Raise one :class:`ConfigError` (a :class:`ConfigTypeError` if any problem is a wrong type) listing every
    problem of ``config`` and its nested configs; return None when there is none."""
    problems = config_problems(config)
    if problems:
        error = ConfigTypeError if any(isinstance(p, _TypeProblem) for p in problems) else ConfigError
        raise error([str(p) for p in problems], owner=type(config).__name__)


def required_problems(config: Any, **meanings: str) -> list[str]:
    """``"<field> is required (<meaning>)"`` for every named field of ``config`` that is empty or None."""
    return [f"{name} is required ({meaning})" for name, meaning in meanings.items() if not getattr(config, name)]


class Validated:
    """Base of the config dataclasses: a config is validated when it is made (:func:`validate`), so a bad
    one never exists; a subclass lists its own problems in ``problems()``."""

    def __post_init__(self) -> None:
        validate(self)
