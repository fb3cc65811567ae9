"""What one setting of `pneumo serve` is beyond its default: its help, unit, range and flag
aliases (`Setting`, the metadata of a `ServeConfig` field), its type (`Kind`), and how a
value of it is read from text (an environment variable, a flag) or from TOML and JSON. Error
messages say what was expected and what kind of value arrived."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumo_onnx.engine.errors import UsageError

ENV_PREFIX = "PNEUMO_"
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
KIND_NAMES = {
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    str: "a string",
    Path: "a path (a string)",
    tuple: "a list of strings",
}


@dataclass(frozen=True)
class Setting:
    """The schema of one setting beyond its type and default."""

    help: str
    unit: str = ""  # of the number: MB, s, ms, Mpx, hours, days
    low: float | None = None  # the least value allowed
    high: float | None = None  # the greatest
    positive: bool = False  # above 0
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # more flag names, kept working after a rename
    settable: bool = True  # False: derived by the server, not given by a user
    secret: bool = False  # may hold a password: never shown, never in repr

    def problem(self, value: object) -> str | None:
        """What is wrong with `value` (a value of the setting's type), or None."""
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}"
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        if not math.isfinite(value):
            return "must be a finite number"
        if self.positive and not value > 0:
            return "must be positive"
        low, high = self.low, self.high
        if low is not None and high is not None and not low <= value <= high:
            return f"must be between {low:g} and {high:g}"
        if low is not None and value < low:
            return f"must be at least {low:g}"
        return None


@dataclass(frozen=True)
class Kind:
    """A setting's type: `base` is int, float, bool, str, Path or tuple (of strings)."""

    base: type
    optional: bool  # None allowed (it means: the default behaviour the help names)

    @classmethod
    def of(cls, hint: Any) -> Kind:
        if isinstance(hint, types.UnionType):
            (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
            return cls(typing.get_origin(hint) or hint, True)
        return cls(typing.get_origin(hint) or hint, False)

    def from_text(self, text: str) -> Any:
        """The value written `text` (an environment variable, a flag): booleans as
        true/false/1/0/yes/no/on/off, lists comma-separated, empty for None where allowed."""
        text = text.strip()
        if self.base is tuple:
            return tuple(s.strip() for s in text.split(",") if s.strip())
        if not text:
            if self.optional:
                return None
            raise ValueError(f"expected {KIND_NAMES[self.base]}, got nothing")
        if self.base is bool:
            if text.lower() not in TRUE + FALSE:
                raise ValueError(f"expected true or false (or 1/0, yes/no, on/off), got {text!r}")
            return text.lower() in TRUE
        try:
            return self.base(text)
        except ValueError:
            raise ValueError(f"expected {KIND_NAMES[self.base]}, got {text!r}") from None

    def from_plain(self, value: object) -> Any:
        """`value` as TOML or JSON gives it. The message names the kind of value that arrived,
        never the value."""
        base = self.base
        if value is None and self.optional:
            return None
        if base is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base in (bool, str) and type(value) is base:
            return value
        if base is Path and isinstance(value, str):
            return Path(value)
        if base is tuple and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError(f"expected {KIND_NAMES[base]}, got {_kind_of(value)}")


class SettingsError(UsageError):
    """Settings that cannot be served, every one named: `problems` holds (setting, what is
    wrong), so a caller that knows where each value came from can say so."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{flag(name)} {what}" for name, what in problems))
        self.problems = problems


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _kind_of(value: object) -> str:
    for base, named in ((bool, "a boolean"), (int, "an integer"), (float, "a float")):
        if isinstance(value, base):
            return named
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list" if all(isinstance(v, str) for v in value) else "a list of non-strings"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__
