"""Where the settings of `pneumo serve` come from, lowest precedence first:

    the defaults of `ServeConfig` < a TOML file (`--config FILE.toml`, or PNEUMO_CONFIG)
    < the environment (`PNEUMO_<NAME>`) < command-line flags.

`resolve` reads them all and reports every problem at once, naming where each bad value came
from; it remembers each setting's source for `pneumo serve --print-config` (`describe`). A
file's keys are the setting names, with underscores or dashes (`max_batch = 64`). API and
admin keys are not settings: `front.security` reads them (PNEUMO_API_KEYS, PNEUMO_ADMIN_KEYS
and the key files), and no message or listing ever shows one.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumo_onnx.engine.errors import FileAccessError, UsageError
from pneumo_onnx.engine.serve.config import CONFIG_ENV, ServeConfig, settings
from pneumo_onnx.engine.serve.keys import ADMIN_KEY_ENV, API_KEY_ENV, load_api_keys
from pneumo_onnx.engine.serve.setting import ENV_PREFIX, SettingsError, env_name, flag

CONFIG_FILE_ENV = "PNEUMO_CONFIG"
# PNEUMO_ variables that are not settings, but known: no "not a setting" warning for them.
OTHER_VARIABLES = {API_KEY_ENV, ADMIN_KEY_ENV, CONFIG_FILE_ENV, CONFIG_ENV}
CLOSE = 0.8  # how alike a name must be to a setting's to be taken for a misspelling of it
KEYS = {"api_keys": (API_KEY_ENV, "api_key_file"), "admin_keys": (ADMIN_KEY_ENV, "admin_key_file")}


@dataclass(frozen=True)
class Resolved:
    """The config to serve, and where each setting came from: 'default', 'file NAME',
    'env PNEUMO_X' or 'flag --x' (`keys`: how many of each kind, from where)."""

    config: ServeConfig
    sources: dict[str, str]
    keys: dict[str, str]
    unknown_env: list[str]  # PNEUMO_ variables that name no setting (a typo?)


def resolve(
    flags: Mapping[str, Any],
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Resolved:
    """The config from the defaults, the file, `environ` (default: os.environ) and `flags`
    (setting name -> value, only those given on the command line). UsageError lists every
    problem, each with the source of its value."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    problems: list[str] = []
    path = config_file or (Path(env[CONFIG_FILE_ENV]) if env.get(CONFIG_FILE_ENV) else None)
    if path is not None:
        for name, value in _read_file(path, problems).items():
            values[name], sources[name] = value, f"file {path}"
    for name, (kind, _) in settings().items():
        variable = env_name(name)
        if variable in env:
            try:
                values[name], sources[name] = kind.from_text(env[variable]), f"env {variable}"
            except ValueError as e:
                problems.append(f"{variable}: {e}")
    for name, value in flags.items():
        values[name], sources[name] = value, f"flag {flag(name)}"
    key_sources = _load_keys(values, env, problems)
    config: ServeConfig | None = None
    try:
        config = ServeConfig(**values)
    except SettingsError as e:
        problems += [f"{flag(n)} {what}{_from(sources.get(n))}" for n, what in e.problems]
    unknown = _unknown_variables(env, problems)
    if config is None or problems:
        raise UsageError("; ".join(problems))
    every = {name: sources.get(name, "default") for name in settings()}
    return Resolved(config, every, key_sources, unknown)


def _unknown_variables(env: Mapping[str, str], problems: list[str]) -> list[str]:
    """The PNEUMO_ variables that name no setting. One that looks like a setting's (a typo, or
    an old flag's name) is a problem: a server that silently ignored PNEUMO_API_KEY would run
    without keys. The others are returned, for a warning."""
    known = {env_name(name) for name in settings()} | OTHER_VARIABLES
    others = [v.removeprefix(ENV_PREFIX).lower() for v in OTHER_VARIABLES]
    unknown = []
    for variable in sorted(v for v in env if v.startswith(ENV_PREFIX) and v not in known):
        meant = _meant(variable.removeprefix(ENV_PREFIX).lower(), others)
        if meant is None:
            unknown.append(variable)
        else:
            problems.append(f"{variable} is not a setting (did you mean {env_name(meant)}?)")
    return unknown


def _meant(name: str, others: Sequence[str] = ()) -> str | None:
    """The setting (or other known name) `name` most likely misspells, or names by a flag's
    old name (decode_threads: decode_workers); None if none is close."""
    for setting_name, (_, setting) in settings().items():
        if name in (a.removeprefix("--").replace("-", "_") for a in setting.aliases):
            return setting_name
    close = difflib.get_close_matches(name, [*settings(), *others], n=1, cutoff=CLOSE)
    return close[0] if close else None


def _load_keys(
    values: dict[str, Any], env: Mapping[str, str], problems: list[str]
) -> dict[str, str]:
    """Put the API and admin keys into `values`; say how many came from where (never which)."""
    described = {}
    for field_name, (variable, file_setting) in KEYS.items():
        key_file = values.get(file_setting)
        try:
            values[field_name] = tuple(load_api_keys(key_file, env, variable))
        except UsageError as e:
            problems.append(e.message)
            continue
        given = [variable] if env.get(variable, "").strip() else []
        if key_file is not None:
            given.append(str(key_file))
        count = len(values[field_name])
        described[field_name] = (
            f"{count} key{'s' * (count != 1)} from {' and '.join(given)}" if count else "none"
        )
    return described


def describe(resolved: Resolved) -> str:
    """The effective settings as a TOML file (fit for --config), each with its source and
    unit in a comment; unset ones and the keys (counts only) as comments."""
    lines = ["# pneumo serve settings: default < file < environment < flag"]
    for name, (_, setting) in settings().items():
        value = getattr(resolved.config, name)
        note = (f"{setting.unit}; " if setting.unit else "") + resolved.sources[name]
        if value is None or value == "":
            lines.append(f"# {name}: not set ({resolved.sources[name]})")
        elif setting.secret:
            lines.append(f"# {name}: set ({resolved.sources[name]}; redacted)")
        else:
            lines.append(f"{name} = {_toml(value)}  # {note}")
    for name, how in resolved.keys.items():
        lines.append(f"# {name}: {how} (redacted)")
    for variable in resolved.unknown_env:
        lines.append(f"# {variable} is not a setting: ignored")
    return "\n".join(lines)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def _from(source: str | None) -> str:
    """' (from PNEUMO_X)' for a value the user did not type on the command line."""
    if source is None or source.startswith("flag "):
        return ""
    return f" (from {source.split(' ', 1)[1]})"


def _read_file(path: Path, problems: list[str]) -> dict[str, Any]:
    """The settings a TOML file gives; what is wrong in it goes to `problems`, each named by
    the file and key (never the value: a misplaced key may be a secret)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError as e:
            raise UsageError("--config needs Python 3.11, or tomli on 3.10") from e
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise FileAccessError("read the config file", path, e) from e
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not a valid TOML file: {e}") from None
    known = settings()
    values: dict[str, Any] = {}
    seen = set()
    for key, value in data.items():
        name = key.replace("-", "_")
        if name in seen:
            problems.append(f"{path}: {key!r} names a setting given twice")
            continue
        seen.add(name)
        if name not in known:
            problems.append(f"{path}: {key!r} is not a setting{_suggestion(name)}")
        else:
            try:
                values[name] = known[name][0].from_plain(value)
            except ValueError as e:
                problems.append(f"{path}: {key}: {e}")
    return values


def _suggestion(name: str) -> str:
    if name in KEYS:
        variable, file_setting = KEYS[name]
        return f" (keys are never read from a config file: use {variable} or {file_setting})"
    meant = _meant(name)
    return f" (did you mean {meant}?)" if meant else ""
