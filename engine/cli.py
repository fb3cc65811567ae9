"""The `pneumo` command line. Errors become `error: message` and an exit code here, only here.

Exit codes: 0 ok, 1 something checked or processed failed, 2 usage error.
TensorFlow is imported only inside `convert` and `validate --against`, never at start-up.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from engine import __version__
from engine.errors import PneumoError


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
        return int(args.handler(args))
    except PneumoError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumo",
        description="Convert Keras pneumonia-detection CNNs to ONNX; run them without TensorFlow.",
    )
    parser.add_argument("--version", action="version", version=f"pneumo-onnx {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_convert(sub)
    _add_validate(sub)
    return parser


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="Keras/SavedModel -> validated ONNX model repository (needs the 'convert' extra)",
        description="Convert a Keras .keras/.h5 file or SavedModel folder to ONNX, validate it "
        "against the original (parity gate), build variants, and write one version of a "
        "Triton-compatible model repository. Nothing is written unless every check passes.",
    )
    p.add_argument("source", help="a .keras or .h5 file, or a SavedModel folder")
    p.add_argument("-o", "--output", required=True, metavar="REPO_DIR", help="model repository")
    p.add_argument("--name", default="pneumonia", help="model name in the repository")
    p.add_argument("--version", type=int, default=None, help="version number (default: next)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument(
        "--variants",
        default="all",
        help="comma list of int8, fp16, tflite, tflite-dynamic, ort; or all (default), none",
    )
    _add_images(p)
    p.add_argument(
        "--input-size",
        type=_size,
        default=None,
        metavar="HxW",
        help="input size, for models that accept any size",
    )
    p.add_argument(
        "--input-scaling",
        choices=("unit", "raw", "symmetric"),
        default=None,
        help="input range: unit [0,1], raw [0,255], symmetric [-1,1] (default: detect)",
    )
    p.add_argument(
        "--resize-filter",
        default="bicubic",
        choices=("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"),
        help="filter the model was trained with (default bicubic, as PIL resize)",
    )
    p.add_argument(
        "--labels",
        type=_labels,
        default=None,
        metavar="A,B",
        help="class names: NEGATIVE,POSITIVE; for a 2-unit softmax in output order",
    )
    p.add_argument(
        "--positive-index",
        type=int,
        default=None,
        help="2-unit softmax: index of the PNEUMONIA unit",
    )
    p.add_argument("--threshold", type=_unit_float, default=0.5, help="default threshold")
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-5,
        help="fp32 parity gate: max abs difference allowed (default 1e-5)",
    )
    p.add_argument(
        "--custom-objects",
        metavar="FILE.py",
        default=None,
        help="Python file defining the model's custom layers/classes",
    )
    p.set_defaults(handler=_run_convert)


def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check an ONNX model: structure, contract, runtime, parity (needs 'convert' extra)",
        description="Validate an ONNX model for CI pipelines: onnx.checker, shape inference, "
        "contract metadata, onnxruntime load, dynamic batch, manifest hash, and (with --against) "
        "parity with the original Keras model. Exit 1 if any check fails.",
    )
    p.add_argument("model", help="an .onnx file")
    p.add_argument(
        "--against",
        metavar="KERAS_MODEL",
        default=None,
        help="original .keras/.h5/SavedModel to compare outputs with (needs TensorFlow)",
    )
    _add_images(p)
    p.add_argument(
        "--report",
        default=None,
        metavar="out.json|out.xml",
        help="write a JSON or JUnit XML report",
    )
    p.add_argument("--tolerance", type=float, default=1e-5, help="parity tolerance")
    p.add_argument("--custom-objects", metavar="FILE.py", default=None)
    p.set_defaults(handler=_run_validate)


def _add_images(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--images",
        action="append",
        default=[],
        metavar="DIR",
        help="real X-rays for probes and calibration, besides the shipped samples (repeatable)",
    )


def _run_convert(args: argparse.Namespace) -> int:
    from convert.extra import require

    require("pneumo convert", ("tensorflow", "tf2onnx", "onnx"))
    from convert.cli import run_convert

    return run_convert(args)


def _run_validate(args: argparse.Namespace) -> int:
    from convert.extra import require

    require("pneumo validate", ("onnx",))
    from convert.cli import run_validate

    return run_validate(args)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW like 128x128, got {text!r}") from None
    return h, w


def _labels(text: str) -> tuple[str, ...]:
    labels = tuple(v.strip() for v in text.split(",") if v.strip())
    if len(labels) != 2:
        raise argparse.ArgumentTypeError(f"expected two names like NORMAL,PNEUMONIA, got {text!r}")
    return labels


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


if __name__ == "__main__":
    sys.exit(main())
