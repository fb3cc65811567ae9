"""Typed reads of a JSON object that collect every problem instead of stopping at the first:
what `Manifest.from_dict` is built on, so one error lists all that is wrong with a manifest.

A bad or missing field adds a problem and reads as a placeholder of the right type; whoever
reads must raise once `problems` is non-empty instead of building anything from placeholders
(`parse` does that).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any, TypeVar

from pneumo_onnx.engine.errors import RepositoryError

T = TypeVar("T")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Bad(ValueError):
    """A reader refuses a value: `expected` says what it wanted ("a string"), or, with
    `whole`, it is the whole message (a contract's own error, for one)."""

    def __init__(self, expected: str, whole: bool = False) -> None:
        super().__init__(expected)
        self.expected = expected
        self.whole = whole


class Fields:
    """One JSON object at `where` (a dotted path, for messages), read field by field; every
    bad field is appended to the shared `problems`."""

    def __init__(self, data: object, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = problems
        self.data: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
        if not isinstance(data, Mapping):
            problems.append(f"{where or 'the top level'} must be a JSON object, got {_shown(data)}")

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def present(self, key: str) -> bool:
        """`key` holds a value (JSON null counts as absent: writers wrote null for "none")."""
        return self.data.get(key) is not None

    def value(self, key: str, read: Callable[[object], T], placeholder: T) -> T:
        """data[key] read by `read`; a problem (and `placeholder`) if it is missing or bad."""
        if not self.present(key):
            self.missing(key)
            return placeholder
        return self._read(key, self.data[key], read, placeholder)

    def optional(self, key: str, read: Callable[[object], T]) -> T | None:
        """data[key] read by `read`, None where absent or null; a problem if it is bad."""
        if not self.present(key):
            return None
        return self._read(key, self.data[key], read, None)

    def section(self, key: str, build: Callable[[Fields], T]) -> T | None:
        """The object at `key` built by `build` from its fields; None where absent or null."""
        if not self.present(key):
            return None
        return build(Fields(self.data[key], self.path(key), self.problems))

    def part(self, key: str, build: Callable[[Fields], T]) -> T:
        """The object at `key`, which must be there, built by `build` (if it is missing, a
        problem, and a placeholder built from nothing)."""
        if not self.present(key):
            self.missing(key)
            return build(Fields({}, self.path(key), []))
        return build(Fields(self.data[key], self.path(key), self.problems))

    def entries(self, key: str, build: Callable[[Fields], T]) -> dict[str, T] | None:
        """An object of name -> object, each built by `build`; None where absent."""
        if not self.present(key):
            return None
        inner = Fields(self.data[key], self.path(key), self.problems)
        return {
            name: build(Fields(value, inner.path(name), self.problems))
            for name, value in inner.data.items()
        }

    def missing(self, key: str) -> None:
        self.problems.append(f"{self.path(key)} is missing")

    def rest(self, known: Collection[str]) -> dict[str, Any]:
        """The fields besides `known`, as written: a check's own figures."""
        return {k: v for k, v in self.data.items() if k not in known}

    def _read(self, key: str, value: object, read: Callable[[object], T], fallback: Any) -> Any:
        try:
            return read(value)
        except Bad as e:
            where = self.path(key)
            text = f"{where}: {e.expected}" if e.whole else f"{where} must be {e.expected}"
            self.problems.append(text if e.whole else f"{text}, got {_shown(value)}")
            return fallback


def parse(build: Callable[[Fields], T], data: object, what: str) -> T:
    """`build` run on `data`; one RepositoryError naming every problem it found."""
    problems: list[str] = []
    built = build(Fields(data, "", problems))
    if problems:
        raise RepositoryError(f"{what} is malformed: " + "; ".join(problems))
    return built


# --- readers: a JSON value -> the type, or Bad -------------------------------------------------


def text(value: object) -> str:
    if not isinstance(value, str):
        raise Bad("a string")
    return value


def flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise Bad("true or false")
    return value


def count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Bad("a whole number >= 0")
    return value


def positive(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Bad("a whole number >= 1")
    return value


def number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Bad("a finite number")
    return float(value)


def sha256(value: object) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise Bad("64 lowercase hex digits (a sha256)")
    return value


def timestamp(value: object) -> str:
    """An ISO 8601 time, kept as written."""
    try:
        datetime.fromisoformat(text(value))
    except ValueError as e:
        raise Bad("an ISO 8601 time") from e
    return str(value)


def file_name(value: object) -> str:
    """A plain file name inside the version folder: no folder part, no '..'."""
    name = text(value)
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise Bad("a file name inside the version folder")
    return name


def one_of(*choices: str) -> Callable[[object], str]:
    def read(value: object) -> str:
        if value not in choices:
            raise Bad(f"one of {', '.join(choices)}")
        return str(value)

    return read


def table_of(read: Callable[[object], T]) -> Callable[[object], dict[str, T]]:
    """A reader of an object of name -> value, each value read by `read`."""

    def read_table(value: object) -> dict[str, T]:
        if not isinstance(value, Mapping):
            raise Bad("a JSON object")
        try:
            return {str(k): read(v) for k, v in value.items()}
        except Bad as e:
            raise Bad(f"an object whose values are each {e.expected}") from e

    return read_table


def figures(value: object) -> dict[str, Any]:
    """A check's figures, as it recorded them: any JSON object."""
    if not isinstance(value, Mapping):
        raise Bad("a JSON object")
    return dict(value)


def _shown(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
