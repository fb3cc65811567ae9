"""What several `pneumo` commands share: the help format, option builders generated from the
engine's own constants (devices, preprocessing paths, variants, scalings, filters), argument
types, and loading the engine the options name."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

from engine.contract import RESIZE_FILTERS, SCALINGS
from engine.repository.variants import OPTIONAL_VARIANTS, VARIANT_FILES
from engine.runtime.choices import DEVICES, PREPROCESSING

if TYPE_CHECKING:
    from engine.runtime.engine import Engine

Subparsers = argparse._SubParsersAction  # argparse exposes no public name for it


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS) or not action.help:
            return action.help
        return super()._get_help_string(action)


def command(sub: Subparsers, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand's parser, with the shared help format."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=description, formatter_class=HelpFormatter
    )
    return parser


def add_model_options(p: argparse.ArgumentParser, device: bool = True) -> None:
    """--model, --variant and (unless `device` is False) --device, --preprocessing, --threads."""
    p.add_argument(
        "--model",
        default=None,
        metavar="M",
        help="an .onnx file or a model repository folder (default: the shipped model)",
    )
    add_variant_option(p)
    if not device:
        p.set_defaults(device="cpu", preprocessing="fast", threads=None)
        return
    add_device_option(p)
    add_preprocessing_option(p)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: cores)")


def add_preprocessing_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preprocessing",
        default=PREPROCESSING[0],
        choices=PREPROCESSING,
        help="fast: reduced-scale JPEG decoding; reference: exactly as in training",
    )


def add_variant_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--variant",
        default=None,
        choices=tuple(VARIANT_FILES),
        help="which file of a repository version to run (default fp32)",
    )


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=DEVICES[0], choices=DEVICES, help="execution provider")


def add_images_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--images",
        action="append",
        default=[],
        metavar="DIR",
        help="real X-rays for probes and calibration, besides the shipped samples (repeatable)",
    )


def add_contract_options(p: argparse.ArgumentParser) -> None:
    """The options of `pneumo convert` that state the model's input pipeline."""
    p.add_argument(
        "--input-scaling",
        choices=tuple(SCALINGS),
        default=None,
        help="input range: unit [0,1], raw [0,255], symmetric [-1,1] (default: detect)",
    )
    p.add_argument(
        "--resize-filter",
        default="bicubic",
        choices=RESIZE_FILTERS,
        help="filter the model was trained with (bicubic: PIL's resize default)",
    )


def variant_list_help() -> str:
    return f"comma list of {', '.join(OPTIONAL_VARIANTS)}; or all, none"


def load_engine(args: argparse.Namespace) -> Engine:
    """The engine the model options name. No spinning even for batch: on few cores, spinning
    onnxruntime threads starve the decode threads (150 vs 199 img/s on 2 cores)."""
    from engine.runtime.engine import Engine

    return Engine.load(
        args.model,
        device=args.device,
        variant=args.variant,
        preprocessing=args.preprocessing,
        threads=args.threads,
    )


def unit_float(text: str) -> float:
    """A number in [0, 1] (thresholds, target sensitivity)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0.0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW like 128x128, got {text!r}") from None
    return h, w


def labels(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    if len(names) != 2:
        raise argparse.ArgumentTypeError(f"expected two names like NORMAL,PNEUMONIA, got {text!r}")
    return names
