"""Handlers of `pneumo convert` and `pneumo validate`, imported only when those commands run."""

from __future__ import annotations

import argparse

from engine.errors import EXIT_FAILED, EXIT_OK


def run_convert(args: argparse.Namespace) -> int:
    from convert.detect import Overrides
    from convert.pipeline import ConvertOptions, convert
    from convert.variants import parse_variants

    opts = ConvertOptions(
        name=args.name,
        version=args.version,
        opset=args.opset,
        variants=parse_variants(args.variants),
        overrides=Overrides(
            input_size=args.input_size,
            input_scaling=args.input_scaling,
            resize_filter=args.resize_filter,
            labels=args.labels,
            positive_index=args.positive_index,
            threshold=args.threshold,
        ),
        image_folders=args.images,
        tolerance=args.tolerance,
        custom_objects=args.custom_objects,
    )
    result = convert(args.source, args.output, opts)
    for line in result.report.summary_lines():
        print(line)
    print(f"wrote {result.version_dir} in {result.seconds:.1f} s:")
    for filename, entry in result.manifest["files"].items():
        print(f"  {filename:<22} {entry['bytes'] / 1e6:8.2f} MB  sha256 {entry['sha256'][:12]}")
    return EXIT_OK


def run_validate(args: argparse.Namespace) -> int:
    # TensorFlow is imported only for --against: validating an ONNX file alone stays TF-free.
    from convert.validate import validate_file

    report = validate_file(
        args.model,
        against=args.against,
        image_folders=args.images,
        tolerance=args.tolerance,
        custom_objects=args.custom_objects,
    )
    for line in report.summary_lines():
        print(line)
    if args.report:
        report.write(args.report)
    print(f"{args.model}: {'valid' if report.ok else 'INVALID'}")
    return EXIT_OK if report.ok else EXIT_FAILED
