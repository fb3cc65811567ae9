"""`pneumo serve`: its options, generated from the settings schema (`serve.config`), and what it
runs. FastAPI and uvicorn load inside the handler, so `pneumo --help` stays light."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from pneumo_onnx.engine.cli.options import Subparsers, command
from pneumo_onnx.engine.errors import EXIT_OK
from pneumo_onnx.engine.serve.config import ServeConfig, settings
from pneumo_onnx.engine.serve.config_sources import CONFIG_FILE_ENV
from pneumo_onnx.engine.serve.keys import ADMIN_KEY_ENV, API_KEY_ENV
from pneumo_onnx.engine.serve.setting import ENV_PREFIX, Kind, flag

log = logging.getLogger(__name__)

UNIT_METAVARS = {"1/s": "PER_S", "s": "SECONDS", "ms": "MS", "MB": "MB", "Mpx": "MPX"}
UNIT_METAVARS |= {"hours": "HOURS", "days": "DAYS"}
KIND_METAVARS = {int: "N", float: "X", str: "TEXT", Path: "PATH", tuple: "A,B"}
DESCRIPTION = "Serve a model repository over HTTP with dynamic batching."
EPILOG = f"""Where settings come from, lowest precedence first: the defaults shown above < a TOML \
file (--config FILE.toml, or ${CONFIG_FILE_ENV}) < the environment < these flags. \
`--print-config` shows what wins, and from where.

Every option is also an environment variable, {ENV_PREFIX} and its name in capitals (booleans \
true/false, 1/0, yes/no or on/off; lists comma-separated), and a key of the file (underscores or \
dashes; lists as TOML arrays):

  {ENV_PREFIX}MAX_BATCH=64 {ENV_PREFIX}PROTECT_HEALTH=true pneumo serve

  # serve.toml
  max_batch = 64
  protect_health = true
  forwarded_allow_ips = ["10.0.0.1"]

A bad value, an unknown key in the file, or a {ENV_PREFIX} variable that looks like a \
misspelled setting stops the server (exit 2), naming where it came from.

API keys come from {API_KEY_ENV} (comma-separated) and/or --api-key-file; admin keys \
(repository control) from {ADMIN_KEY_ENV} and/or --admin-key-file. Keys are never read from \
the TOML file, and never shown."""


def add(sub: Subparsers) -> None:
    p = command(
        sub,
        "serve",
        help="REST server: seed routes, KServe V2, jobs, monitoring (needs the 'serve' extra)",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE.toml",
        help=f"settings file (TOML), below the environment and flags (default: ${CONFIG_FILE_ENV})",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings, each with where it came from (keys redacted), as "
        "a TOML file, and exit",
    )
    defaults = ServeConfig()
    for name, (kind, setting) in settings().items():
        default = getattr(defaults, name)
        shown = (
            "" if default is None or default is False or default == () else f" (default: {default})"
        )
        # Not given: absent from the namespace, so the environment and the file stay in force.
        options: dict[str, Any] = dict(
            dest=name,
            default=argparse.SUPPRESS,
            help=(setting.help + shown).replace("%", "%%"),  # argparse formats help with %
        )
        if kind.base is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = _parser(kind)
            if setting.choices:
                options["choices"] = setting.choices
            else:  # the unit where there is one: --max-delay-ms MS, --body-timeout S
                options["metavar"] = UNIT_METAVARS.get(setting.unit) or KIND_METAVARS[kind.base]
        p.add_argument(flag(name), *setting.aliases, **options)
    p.set_defaults(handler=run)


def _parser(kind: Kind) -> Any:
    """What argparse converts a flag's text with: the environment's reading, so that a value
    means the same in either place."""

    def parse(text: str) -> Any:
        try:
            return kind.from_text(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def run(args: argparse.Namespace) -> int:
    from pneumo_onnx.engine.serve.config_sources import describe, resolve

    given = {name: getattr(args, name) for name in settings() if hasattr(args, name)}
    resolved = resolve(given, args.config)
    if args.print_config:
        print(describe(resolved))
        return EXIT_OK

    from pneumo_onnx.engine.serve import server
    from pneumo_onnx.engine.serve.logs import configure

    # A server logs structured JSON lines (access log with request ids included) at INFO.
    for handler in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(handler)
    configure("INFO")
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # per-part parser chatter
    chosen = {n: s for n, s in resolved.sources.items() if s != "default"}
    secret = {n for n, (_, setting) in settings().items() if setting.secret}
    log.info(
        "settings: %s",
        "; ".join(
            f"{n}={'(redacted)' if n in secret else repr(getattr(resolved.config, n))} ({s})"
            for n, s in chosen.items()
        )
        or "all defaults",
    )
    for variable in resolved.unknown_env:
        log.warning("%s is not a pneumo serve setting: ignored", variable)
    server.run(resolved.config)
    return EXIT_OK
