"""What several `pneumo` commands share: the help format, option builders generated from the
engine's own constants (devices, preprocessing paths, variants, scalings, filters), argument
types, the one `--json [PATH]` convention, and loading the engine the options name."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumo_onnx.engine.contract import COLORS, RESIZE_FILTERS, RESIZE_MODES
from pneumo_onnx.engine.errors import FileAccessError, UsageError
from pneumo_onnx.engine.intensity_spelling import parse_step
from pneumo_onnx.engine.intensity_steps import Step
from pneumo_onnx.engine.presets import PRESETS, preset_help
from pneumo_onnx.engine.repository.variants import OPTIONAL_VARIANTS, VARIANT_FILES
from pneumo_onnx.engine.runtime.choices import DEVICES, PREPROCESSING, PREPROCESSING_HELP
from pneumo_onnx.engine.scaling import SCALINGS

if TYPE_CHECKING:
    from pneumo_onnx.engine.runtime.engine import Engine

Subparsers = argparse._SubParsersAction  # argparse exposes no public name for it
STDIO = "-"  # in place of a file name: standard input or output, as in most Unix tools


class Parser(argparse.ArgumentParser):
    """An argument parser that reads `--json [PATH]` one way in every command (see
    `add_json_option`): the word after `--json` is its PATH only when it is `-` or ends in
    .json, so `pneumo info --json MODEL` and `pneumo predict --json IMAGE` keep their
    argument."""

    takes_json = False  # set by add_json_option

    def parse_known_args(  # type: ignore[override]  # one signature for its overloads
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self.takes_json and args is not None:
            args = bare_json_flags(args)
        return super().parse_known_args(args, namespace)


def bare_json_flags(args: Sequence[str]) -> list[str]:
    """`args` with each `--json` whose next word is not a JSON target written `--json=-`, so
    that argparse leaves that word to the command."""
    words = list(args)
    for i, word in enumerate(words):
        if word == "--":
            break
        if word == "--json" and (i + 1 == len(words) or not is_json_target(words[i + 1])):
            words[i] = f"--json={STDIO}"
    return words


def is_json_target(word: str) -> bool:
    return word == STDIO or word.lower().endswith(".json")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS) or not action.help:
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """Paragraphs (split by blank lines) are filled; a block indented by two spaces (an
        example) stays as written."""
        blocks = []
        for block in text.split("\n\n"):
            if block.startswith("  "):
                blocks.append("\n".join(indent + line for line in block.splitlines()))
            else:
                blocks.append(super()._fill_text(block, width, indent))
        return "\n\n".join(blocks)


def command(
    sub: Subparsers, name: str, help: str, description: str, epilog: str | None = None
) -> Parser:
    """A subcommand's parser, with the shared help format."""
    parser: Parser = sub.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=HelpFormatter
    )
    return parser


def add_json_option(p: Parser, what: str) -> None:
    """`--json [PATH]`, the same in every command: `--json` alone or `--json -` prints `what`
    as JSON on stdout, instead of the text for people; `--json PATH` writes it to PATH, beside
    the usual text. A separate PATH must end in .json (`--json=PATH` takes any name)."""
    p.takes_json = True
    p.add_argument(
        "--json",
        nargs="?",
        const=STDIO,
        default=None,
        metavar="PATH",
        help=f"{what} as JSON: alone or with -, on stdout instead of the text; with PATH "
        "(ending in .json, or --json=PATH), written there as well",
    )


def json_target(args: argparse.Namespace) -> str | None:
    """Where `--json` sends its JSON: None (not asked), STDIO or a file path whose folder
    exists (checked before any work, so a long run does not end on a typo)."""
    target: str | None = args.json
    if target is None or target == STDIO:
        return target
    if not target:
        raise UsageError("--json=: expected a file name, or - for stdout")
    folder = Path(target).parent
    if not folder.is_dir():
        raise UsageError(f"--json {target}: no such folder {folder}")
    return target


def write_json(target: str, payload: Any) -> None:
    """`payload` as indented JSON on stdout (`target` STDIO) or into the file `target`."""
    text = json.dumps(payload, indent=2, default=str) + "\n"
    if target == STDIO:
        sys.stdout.write(text)
        return
    try:
        Path(target).write_text(text, encoding="utf-8")
    except OSError as e:
        raise FileAccessError("write", target, e) from e
    print(f"wrote {target}")


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
        p.set_defaults(device="cpu", preprocessing="auto", threads=None)
        return
    add_device_option(p)
    add_preprocessing_option(p)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: cores)")


def add_variant_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--variant",
        default=None,
        choices=tuple(VARIANT_FILES),
        help="which file of a repository version to run (default fp32)",
    )


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=DEVICES[0], choices=DEVICES, help="execution provider")


def add_preprocessing_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preprocessing",
        default=PREPROCESSING[0],
        choices=PREPROCESSING,
        help=PREPROCESSING_HELP,
    )


def add_threshold_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threshold",
        type=unit_float,
        default=None,
        help="decision threshold in [0, 1]: above it, the positive label (default: the "
        "threshold the model stores; `pneumo info` shows it)",
    )


def add_images_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--images",
        action="append",
        default=[],
        metavar="DIR",
        help="real X-rays for the checks, besides the shipped samples (repeatable); a folder "
        "with NORMAL/ and PNEUMONIA/ subfolders also runs the labelled check (ROC AUC)",
    )


def add_expected_scores_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--expected-scores",
        default=None,
        metavar="FILE.csv",
        help="what your own application computes: a CSV with the columns image (a file name, or "
        "a path relative to the --images folder; the CSV's folder without --images) and score "
        "(P(positive)); fails where the engine, with its defaults, differs by more than 0.02 or "
        "gives another label",
    )


def add_contract_options(p: argparse.ArgumentParser) -> None:
    """The options of `pneumo convert` that state the model's input pipeline: presets, each
    field overridable by its own flag."""
    g = p.add_argument_group(
        "input pipeline",
        "How images were prepared for the model when it was trained: stored in the model and "
        "reproduced exactly by the reference preprocessing. A preset states a whole pipeline; a "
        "flag below overrides that field. Unstated: the image stretched with PIL bicubic, RGB "
        "(grayscale for 1 channel), scaling detected (0-255 when a Rescaling layer is inside, "
        "else [0, 1]).",
    )
    g.add_argument(
        "--preset",
        action="append",
        default=[],
        choices=tuple(PRESETS),
        metavar="NAME",
        help="repeatable (a loader and a preprocess_input: --preset keras-image-dataset "
        f"--preset resnet50). {preset_help()}",
    )
    g.add_argument(
        "--resize-filter",
        default=None,
        choices=RESIZE_FILTERS,
        help="nearest ... hamming: PIL's Image.resize filters (bicubic: its default; nearest: "
        "keras load_img's default); tf-bilinear, tf-nearest: TensorFlow's decoding and "
        "tf.image.resize without antialiasing (image_dataset_from_directory)",
    )
    g.add_argument(
        "--resize-mode",
        default=None,
        choices=RESIZE_MODES,
        help="stretch: to the input size; center-crop: the centred box of the input's aspect "
        "ratio, whole pixels (load_img keep_aspect_ratio, crop_to_aspect_ratio); fit: the same "
        "box in fractional pixels (PIL ImageOps.fit); pad: the whole image centred on black "
        "(ImageOps.pad, pad_to_aspect_ratio)",
    )
    g.add_argument(
        "--color",
        default=None,
        choices=COLORS,
        help="channel order of the input; grayscale for a 3-channel input: gray, repeated",
    )
    g.add_argument(
        "--input-scaling",
        choices=tuple(s for s in SCALINGS if s != "custom"),
        default=None,
        help="; ".join(f"{k}: {v.what}" for k, v in SCALINGS.items() if k != "custom"),
    )
    g.add_argument(
        "--pre-resize",
        action="append",
        type=pre_resize_step,
        default=None,
        metavar="STEP",
        help="an intensity step your code runs on the full-size 8-bit image before resizing, "
        "bit-exact with the library it names; repeatable, in order: scale-abs:ALPHA[:BETA] "
        "(cv2.convertScaleAbs), equalize-hist (cv2.equalizeHist), clahe:CLIP:COLSxROWS "
        "(cv2.createCLAHE(clipLimit, tileGridSize).apply), equalize-pil and "
        "autocontrast[:CUTOFF] (PIL.ImageOps), invert, gamma-cv2:1/GAMMA or gamma-pil:EXPONENT "
        "(a gamma table). cv2's one-channel steps need --color grayscale (or a preset that "
        "reads grey, e.g. opencv-gray)",
    )
    for name, example in (("mean", "0.485,0.456,0.406"), ("std", "0.229,0.224,0.225")):
        g.add_argument(
            f"--input-{name}",
            type=floats,
            default=None,
            metavar="V[,V,V]",
            help=f"custom scaling (x / 255 - mean) / std, per channel in input order: the {name}"
            f", e.g. {example}",
        )


def variant_list_help() -> str:
    return (
        f"comma list of {', '.join(OPTIONAL_VARIANTS)} (each must pass its gate); or all (each "
        "kept if it passes), none"
    )


def load_engine(args: argparse.Namespace) -> Engine:
    """The engine the model options name. No spinning even for batch: on few cores, spinning
    onnxruntime threads starve the decode threads (150 vs 199 img/s on 2 cores)."""
    from pneumo_onnx.engine.runtime.engine import Engine

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


def pre_resize_step(text: str) -> Step:
    try:
        return parse_step(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(e.message) from None


def floats(text: str) -> tuple[float, ...]:
    """One number or a comma list of finite numbers (per-channel mean/std)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        message = f"expected numbers like 0.5,0.4,0.3, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def labels(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    if len(names) != 2:
        raise argparse.ArgumentTypeError(f"expected two names like NORMAL,PNEUMONIA, got {text!r}")
    return names
