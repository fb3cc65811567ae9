"""The `pneumo` command line: one module per command, each with `add(subparsers)` (its options)
and `run(args)` (what it does). Errors become `error: message` and an exit code here, and only
here: 0 ok, 1 something checked or processed failed, 2 usage error (an optional dependency
that is not installed, wherever a command imports it, included: `MissingExtraError.of`).

Heavy imports stay inside the commands' `run`: TensorFlow only in `convert` and
`validate --against`, FastAPI only in `serve`, never at start-up.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from pneumo_onnx import __version__
from pneumo_onnx.engine.cli import (
    batch,
    bench,
    convert,
    evaluate,
    info,
    monitor,
    predict,
    serve,
    validate,
)
from pneumo_onnx.engine.cli.options import HelpFormatter, Parser
from pneumo_onnx.engine.errors import MissingExtraError, PneumoError

COMMANDS = (predict, batch, evaluate, info, bench, convert, validate, serve, monitor)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE, as `yes | head -1` ends


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed usage and the problem
        return int(e.code or 0)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code = int(args.handler(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except PneumoError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return e.exit_code
    except ModuleNotFoundError as e:  # an optional dependency, wherever a command imports it
        missing = MissingExtraError.of(e, f"pneumo {args.command}")
        if missing is None:
            raise
        print(f"error: {missing.message}", file=sys.stderr)
        return missing.exit_code
    except BrokenPipeError:
        # The reader went away (`pneumo info | head -1`): stop quietly. Point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CLOSED_PIPE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pneumo",
        description="Convert Keras pneumonia-detection CNNs to ONNX; run them without TensorFlow.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pneumo-onnx {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add(sub)
    return parser
