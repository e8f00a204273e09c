"""Strict configuration dataclasses from plain mappings (budget-file sections and the like).

A config class is a frozen dataclass whose `__post_init__` checks each field
with `check(ok, name, rule, value)`; `cfg_from_dict(cls, mapping, where)`
rejects unknown keys and turns a broken rule into one `ConfigError` naming
`where.field`, the value and the rule.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from shiftnas.errors import ConfigError, ShiftNASError

__all__ = ["FieldError", "check", "is_int", "is_num", "cfg_from_dict", "read_yaml", "int_arg"]


class FieldError(ConfigError):
    """A config field broke its rule; `from_dict` prefixes the field's path."""

    def __init__(self, name: str, rule: str, value: Any):
        self.name, self.rule, self.value = name, rule, value
        super().__init__(f"`{name}` {rule}, got {value!r}.")


def check(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise FieldError(name, rule, value)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _coerce(tp: Any, v: Any) -> Any:
    """YAML spells `1e-3` as a string and `1` as an int: accept both for float fields."""
    if float in typing.get_args(tp):  # `float | None` and the like
        tp = float
    if isinstance(v, str) and tp is float:
        try:
            return float(v)
        except ValueError:
            return v
    if is_int(v) and tp is float:
        return float(v)
    return v


def cfg_from_dict(cls: type, d: Any, where: str) -> Any:
    """Build the frozen dataclass `cls` from a mapping; every error names `where.field`.

    Unknown keys are errors (with the allowed keys listed); values are checked
    by the class's `__post_init__`.
    """
    if d is None:
        d = {}
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: must be a mapping of {cls.__name__} fields, "
                          f"got {type(d).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for k in d:
        if k not in fields:
            raise ConfigError(f"{where}.{k}: unknown key; allowed: {sorted(fields)}.")
    kw = {k: _coerce(hints.get(k), v) for k, v in d.items()}
    try:
        return cls(**kw)
    except FieldError as exc:
        raise ConfigError(f"{where}.{exc.name}: {exc.rule}, got {exc.value!r}.") from None


def read_yaml(path: str | Path, what: str, error: type[ShiftNASError] = ConfigError) -> Any:
    """Parse the YAML file `path`; a missing file or bad YAML is one line of `error`."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} {str(path)!r} does not exist{' (it is a directory)' if p.is_dir() else ''}.")
    try:
        return yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise error(f"{what} {p}: not valid YAML ({' '.join(str(exc).split())}).") from None


def int_arg(minimum: int = 1) -> Callable[[str], int]:
    """An argparse `type=` accepting integers >= `minimum`."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v
    return parse
