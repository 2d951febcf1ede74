"""Typed values of recipes, manifests and options, checked before anything runs or is written.

Each checker takes the value and ``where`` (what names it to the user: the file and the field, e.g.
``attacks/quick.yaml: attacks[0].steps``, or an option, ``--batch-size``) and returns the value, or
raises a :class:`~robustkit.errors.ConfigError` that says ``<where> must be <what was expected>, got
<the value>``. ``check(value, annotation, where)`` checks a value against a type annotation (``int``,
``float | None``, ``tuple[str, ...]``, ``Literal``...), which is how a recipe's attack parameters are
checked against the fields of the attack's dataclass.

Numbers: a float must be finite (``.nan`` and ``.inf`` are refused), a bool is never a number, a
string like ``'8/255'`` is a fraction; an integer must be integral (``2.5`` is refused, ``3.0`` is 3).
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ConfigError

_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*/\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*$")
_NUMBER = re.compile(r"^\s*[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?\d+)?\s*$")


def fail(where: str, expected: str, value: Any) -> ConfigError:
    """The error for ``value`` at ``where``: ``<where> must be <expected>, got <value>``."""
    return ConfigError(f"{where} must be {expected}, got {_show(value)}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bound(minimum: float | None, exclusive: bool) -> str:
    if minimum is None:
        return ""
    low = int(minimum) if float(minimum).is_integer() else minimum
    return f" {'>' if exclusive else '>='} {low}"


def looks_numeric(value: Any) -> bool:
    """A string that was meant as a number: ``'0.03'``, ``'8/255'``, ``'1.2.3/255'``, ``'1e-3'``."""
    return (
        isinstance(value, str)
        and bool(re.fullmatch(r"\s*[-+0-9.eE/\s]+\s*", value))
        and any(c.isdigit() for c in value)
    )


def parse_fraction(value: str, where: str) -> float:
    """``'8/255'`` or ``'0.03'`` as a float; anything else that looks like a number is refused naming ``where``."""
    m = _FRACTION.match(value)
    if m:
        den = float(m.group(2))
        if den == 0:
            raise ConfigError(f"{where}: division by zero in '{value}'")
        return float(m.group(1)) / den
    if _NUMBER.match(value):
        return float(value)
    raise fail(where, "a number such as 8/255 or 0.03", value)


def number(value: Any, where: str, *, minimum: float | None = None, exclusive: bool = False,
           maximum: float | None = None) -> float | int:  # fmt: skip
    """A finite number (an int or float, or a string like ``'8/255'``), at least ``minimum`` (more than
    it with ``exclusive``) and at most ``maximum``. Ints stay ints; fractions become floats."""
    expected = f"a number{_bound(minimum, exclusive)}" + (
        f" and <= {maximum:g}" if maximum is not None else ""
    )
    if isinstance(value, str) and looks_numeric(value):
        value = parse_fraction(value, where)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(where, expected + " (e.g. 8/255 or 0.03)", value)
    if not math.isfinite(value):
        raise fail(where, f"a finite number{_bound(minimum, exclusive)}", value)
    if minimum is not None and (value < minimum or (exclusive and value == minimum)):
        raise fail(where, expected, value)
    if maximum is not None and value > maximum:
        raise fail(where, expected, value)
    return value


def integer(value: Any, where: str, *, minimum: int | None = None) -> int:
    """An integer at least ``minimum``: ``2.5``, ``true`` and ``'3'`` are refused, ``3.0`` is 3."""
    expected = f"an integer{_bound(minimum, False)}"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(where, expected, value)
    if minimum is not None and value < minimum:
        raise fail(where, expected, value)
    return value


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise fail(where, "true or false", value)
    return value


def string(value: Any, where: str, *, empty: bool = False) -> str:
    """A string (non-empty unless ``empty``)."""
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise fail(where, "a string" if empty else "a non-empty string", value)
    return value


def choice(value: Any, where: str, choices: Iterable[Any]) -> Any:
    """One of ``choices`` (the message lists them, with a suggestion for a near miss)."""
    options = list(choices)
    if isinstance(value, list | dict) or value not in options:
        close = (
            difflib.get_close_matches(value, [str(c) for c in options], 1, 0.6)
            if isinstance(value, str)
            else []
        )
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{where} must be one of {', '.join(map(str, options))}, got {_show(value)}{hint}")
    return value


def items(value: Any, where: str, *, empty: bool = False) -> list[Any]:
    """A list (a tuple counts), non-empty unless ``empty``."""
    if not isinstance(value, list | tuple) or (not empty and not value):
        raise fail(where, "a list" if empty else "a non-empty list", value)
    return list(value)


def mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise fail(where, "a mapping (key: value)", value)
    return dict(value)


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
          list: "a list", tuple: "a list", dict: "a mapping", type(None): "null"}  # fmt: skip


def describe(annotation: Any) -> str:
    """What an annotation asks for, in words (``int | None`` -> ``an integer or null``)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe(a) for a in typing.get_args(annotation)))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    return _NAMES.get(origin or annotation, getattr(annotation, "__name__", str(annotation)))


def check(value: Any, annotation: Any, where: str) -> Any:
    """``value`` checked against the type ``annotation`` (see the module docstring); types this schema
    does not know (tensors, callables, ``Any``) pass as they are, for their owner to check."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None:
            if type(None) in args:
                return None
            raise fail(where, describe(annotation), value)
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return check(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise fail(where, describe(annotation), value)
    if origin is typing.Literal:
        return choice(value, where, typing.get_args(annotation))
    if origin in (list, tuple) or annotation in (list, tuple):
        seq = items(value, where, empty=True)
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if len(set(args)) == 1:
            seq = [check(v, args[0], f"{where}[{i}]") for i, v in enumerate(seq)]
        return seq if (origin or annotation) is list else tuple(seq)
    if origin is dict or annotation is dict:
        return mapping(value, where)
    if annotation is bool:
        return boolean(value, where)
    if annotation is int:
        return integer(value, where)
    if annotation is float:
        return number(value, where)
    if annotation is str:
        if isinstance(value, bool | list | tuple | dict) or value is None:
            raise fail(where, "a string", value)
        return value
    return value
