"""`pneumo validate`: every check on one ONNX file, for CI pipelines (JSON or JUnit report).
Needs `onnx` (the 'convert' extra); TensorFlow only with --against."""

from __future__ import annotations

import argparse

from pneumo_onnx.engine.cli.options import (
    Subparsers,
    add_expected_scores_option,
    add_images_option,
    command,
    unit_float,
)
from pneumo_onnx.engine.errors import EXIT_FAILED, EXIT_OK


def add(sub: Subparsers) -> None:
    p = command(
        sub,
        "validate",
        help="check an ONNX model: structure, contract, runtime, parity (needs 'convert' extra)",
        description="Validate an ONNX model for CI pipelines: onnx.checker, shape inference, "
        "contract metadata, onnxruntime load, dynamic batch, manifest hash, ROC AUC on labelled "
        "--images (a folder with NORMAL/ and PNEUMONIA/), the scores your own application "
        "computed (--expected-scores), and (with --against) parity with the original Keras "
        "model. Exit 1 if any check fails.",
    )
    p.add_argument("model", help="an .onnx file")
    p.add_argument(
        "--against",
        metavar="KERAS_MODEL",
        default=None,
        help="original .keras/.h5/SavedModel to compare outputs with (needs TensorFlow)",
    )
    add_images_option(p)
    p.add_argument(
        "--report",
        default=None,
        metavar="out.json|out.xml",
        help="write a JSON or JUnit XML report",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="fp32 parity gate: max abs output difference allowed (default: 4x the model's own "
        "fp32 noise, within [1e-5, 5e-4]; recorded at conversion, else measured)",
    )
    p.add_argument(
        "--min-auc",
        type=unit_float,
        default=None,
        metavar="X",
        help="fail below this ROC AUC on labelled --images (NORMAL/, PNEUMONIA/ subfolders); "
        "without it, below 0.5 fails",
    )
    add_expected_scores_option(p)
    p.add_argument("--custom-objects", metavar="FILE.py", default=None)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pneumo_onnx.convert.extra import require

    require("pneumo validate", ("onnx",))
    from pneumo_onnx.convert.validate import validate_file

    report = validate_file(
        args.model,
        against=args.against,
        image_folders=args.images,
        tolerance=args.tolerance,
        custom_objects=args.custom_objects,
        min_auc=args.min_auc,
        expected_scores=args.expected_scores,
    )
    for line in report.summary_lines():
        print(line)
    if args.report:
        report.write(args.report)
    print(f"{args.model}: {'valid' if report.ok else 'INVALID'}")
    return EXIT_OK if report.ok else EXIT_FAILED
