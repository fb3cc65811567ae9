"""`pneumo evaluate`: metrics (and plots) on a labelled folder, NORMAL/ and PNEUMONIA/."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumo_onnx.engine.cli.options import (
    STDIO,
    Subparsers,
    add_json_option,
    add_model_options,
    add_threshold_option,
    command,
    json_target,
    load_engine,
    unit_float,
    write_json,
)
from pneumo_onnx.engine.errors import EXIT_FAILED, EXIT_OK


def add(sub: Subparsers) -> None:
    p = command(
        sub,
        "evaluate",
        help="metrics on a labelled folder (NORMAL/, PNEUMONIA/)",
        description="Score every image under DIR/NORMAL and DIR/PNEUMONIA and report ROC AUC, "
        "accuracy, sensitivity, specificity, precision, F1, confusion matrix, Brier score and "
        "the threshold that reaches a target sensitivity. With fewer than 50 images of a class, "
        "or images the model lists as its training data, it says so and recommends no threshold.",
    )
    p.add_argument("folder", metavar="DIR")
    add_threshold_option(p)
    p.add_argument(
        "--target-sensitivity",
        type=unit_float,
        default=0.95,
        help="the recommended threshold is the highest that reaches it",
    )
    add_json_option(p, "the metrics")
    p.add_argument(
        "--plots",
        default=None,
        metavar="OUT_DIR",
        help="write ROC, precision-recall, confusion, calibration and histogram PNGs "
        "(the 'report' extra)",
    )
    add_model_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pneumo_onnx.engine.offline.evaluate import evaluate_folder, report_lines

    target = json_target(args)
    if args.plots:
        from pneumo_onnx.engine.explain.plots import pyplot

        pyplot()  # a missing 'report' extra fails before any scoring
    engine = load_engine(args)
    result = evaluate_folder(engine, Path(args.folder), args.threshold, args.target_sensitivity)
    if target != STDIO:
        print("\n".join(report_lines(result)))
    if target is not None:
        write_json(target, result.to_dict())
    if args.plots:
        from pneumo_onnx.engine.explain.plots import evaluation_plots

        c = engine.contract
        assert result.labels is not None and result.scores is not None
        written = evaluation_plots(
            result.labels,
            result.scores,
            result.metrics["at_threshold"]["threshold"],
            Path(args.plots),
            (c.negative_label, c.positive_label),
            result.metrics["recommended_threshold"],
            result.metrics["caveats"],
        )
        notes = sys.stderr if target == STDIO else sys.stdout  # stdout holds the JSON alone
        print(f"wrote {len(written)} plots to {args.plots}", file=notes)
    return EXIT_FAILED if result.errors else EXIT_OK
