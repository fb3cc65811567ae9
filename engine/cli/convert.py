"""`pneumo convert`: a Keras model -> a validated ONNX model repository version. TensorFlow is
imported only when this command runs (the 'convert' extra)."""

from __future__ import annotations

import argparse

from pneumo_onnx.engine.cli.options import (
    Subparsers,
    add_contract_options,
    add_expected_scores_option,
    add_images_option,
    command,
    labels,
    size,
    unit_float,
    variant_list_help,
)
from pneumo_onnx.engine.contract import OUTPUT_KINDS
from pneumo_onnx.engine.errors import EXIT_OK


def add(sub: Subparsers) -> None:
    p = command(
        sub,
        "convert",
        help="Keras/SavedModel -> validated ONNX model repository (needs the 'convert' extra)",
        description="Convert a Keras .keras/.h5 file or SavedModel folder to ONNX, validate it "
        "against the original (parity gate) and, given labelled --images (NORMAL/, PNEUMONIA/), "
        "on their labels; build variants, and write one version of a Triton-compatible model "
        "repository. Nothing is written unless the fp32 model passes every check; of the "
        "default --variants all, those that miss their gate are left out (with a warning); "
        "a variant named in --variants must pass. State how images were prepared in training "
        "(--preset, or the input pipeline flags): the engine's reference preprocessing "
        "reproduces exactly that. The fast preprocessing path is scored against it on the probe "
        "X-rays (the shipped samples and --images; give at least 20 full-size X-rays) and the "
        "engine uses it by default only where it stayed within 0.01.",
    )
    p.add_argument("source", help="a .keras or .h5 file, or a SavedModel folder")
    p.add_argument("-o", "--output", required=True, metavar="REPO_DIR", help="model repository")
    p.add_argument("--name", default="pneumonia", help="model name in the repository")
    p.add_argument("--version", type=int, default=None, help="version number (default: next)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--variants", default="all", help=variant_list_help())
    add_images_option(p)
    add_expected_scores_option(p)
    p.add_argument(
        "--input-size",
        type=size,
        default=None,
        metavar="HxW",
        help="input size, for models that accept any size",
    )
    add_contract_options(p)
    p.add_argument(
        "--labels",
        type=labels,
        default=None,
        metavar="A,B",
        help="class names: NEGATIVE,POSITIVE; for a 2-unit output in output order",
    )
    p.add_argument(
        "--positive-index",
        type=int,
        default=None,
        help="2-unit output: index of the PNEUMONIA unit",
    )
    p.add_argument(
        "--output-kind",
        choices=OUTPUT_KINDS,
        default=None,
        help="what the output units are, where the model hides its final activation (default: "
        "detected): sigmoid (one unit), softmax2, or sigmoid2 (two sigmoid units your "
        "application reads by argmax; scored o_pos / (o_0 + o_1), above 0.5 exactly when argmax "
        "picks the positive unit)",
    )
    p.add_argument(
        "--threshold",
        type=unit_float,
        default=None,
        help="the decision threshold stored in the contract (default: the contract's 0.5); the "
        "manifest records whether it was stated or the default",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="fp32 parity gate: max abs output difference allowed (default: 4x the model's own "
        "fp32 noise, within [1e-5, 5e-4])",
    )
    p.add_argument(
        "--training-list",
        metavar="FILE",
        default=None,
        help="the model's training images, one dataset-relative name per line (.gz ok): copied "
        "into the version, so pneumo evaluate can tell when it is shown training data",
    )
    p.add_argument(
        "--custom-objects",
        metavar="FILE.py",
        default=None,
        help="Python file defining the model's custom layers/classes",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pneumo_onnx.convert.extra import require

    require("pneumo convert", ("tensorflow", "tf2onnx", "onnx"))
    from pneumo_onnx.convert.detect import Overrides
    from pneumo_onnx.convert.pipeline import ConvertOptions, convert
    from pneumo_onnx.convert.variants import parse_variants

    opts = ConvertOptions(
        name=args.name,
        version=args.version,
        opset=args.opset,
        variants=parse_variants(args.variants),
        overrides=Overrides(
            input_size=args.input_size,
            input_scaling=args.input_scaling,
            resize_filter=args.resize_filter,
            resize_mode=args.resize_mode,
            color=args.color,
            input_mean=args.input_mean,
            input_std=args.input_std,
            pre_resize=tuple(args.pre_resize) if args.pre_resize else None,
            presets=tuple(args.preset),
            labels=args.labels,
            positive_index=args.positive_index,
            output_kind=args.output_kind,
            threshold=args.threshold,
        ),
        image_folders=args.images,
        tolerance=args.tolerance,
        custom_objects=args.custom_objects,
        training_list=args.training_list,
        expected_scores=args.expected_scores,
    )
    result = convert(args.source, args.output, opts)
    for line in result.report.summary_lines():
        print(line)
    fidelity = result.manifest.preprocessing
    print(f"pipeline: {result.contract.input.describe()}")
    if fidelity is not None:  # every conversion measures it
        print(f"preprocessing by default: {fidelity.verdict} ({fidelity.reason})")
    print(f"wrote {result.version_dir} in {result.seconds:.1f} s:")
    for filename, entry in result.manifest.files.items():
        print(f"  {filename:<22} {entry.size / 1e6:8.2f} MB  sha256 {entry.sha256[:12]}")
    return EXIT_OK
