"""`pneumo batch`: score a folder into CSV or JSON Lines (resumable), locally or on Ray, with
an optional HTML report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pneumo_onnx.engine.cli.options import (
    STDIO,
    Subparsers,
    add_model_options,
    add_threshold_option,
    command,
    load_engine,
)
from pneumo_onnx.engine.errors import EXIT_FAILED, EXIT_OK, UsageError
from pneumo_onnx.engine.runtime.engine import check_batch_options


def add(sub: Subparsers) -> None:
    p = command(
        sub,
        "batch",
        help="score a folder into results.csv or results.jsonl (resumable)",
        description="Score every image in a folder. Rows are flushed after each model batch; "
        "--resume continues an interrupted run. Exit 1 if any image could not be scored.",
    )
    p.add_argument("folder", metavar="DIR")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="results.csv|results.jsonl|-",
        help="the results file; - writes CSV to stdout (the summary then goes to stderr)",
    )
    p.add_argument("--recursive", action="store_true", help="include subfolders")
    p.add_argument("--batch-size", type=int, default=32, help="images per model run")
    p.add_argument(
        "--workers", type=int, default=None, help="decode worker processes (default: cores)"
    )
    add_threshold_option(p)
    p.add_argument("--resume", action="store_true", help="skip images already in the output")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument(
        "--report",
        default=None,
        metavar="report.html",
        help="also write one self-contained HTML report (the 'report' extra)",
    )
    p.add_argument(
        "--report-heatmaps",
        type=int,
        default=12,
        metavar="N",
        help="heatmaps of the N top-scoring images in the report (0: none)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="auto|ray://ADDRESS",
        help="score on Ray Data (the 'ray' extra): alone, a local Ray instance; "
        "'auto' or an address, a running cluster. Output: a .parquet or .csv folder",
    )
    add_model_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.output == STDIO:
        for flag, given in (("--report", args.report), ("--ray", args.ray)):
            if given is not None:
                raise UsageError(f"{flag} needs an output file, not -o - (stdout)")
    if args.report is not None:
        if args.ray is not None:
            raise UsageError("--report works on local runs only, not with --ray")
        if not 0 <= args.report_heatmaps <= 100:
            raise UsageError(f"--report-heatmaps must be 0-100, got {args.report_heatmaps}")
        from pneumo_onnx.engine.explain.plots import pyplot

        pyplot()  # a missing 'report' extra fails before any scoring
    if args.ray is not None:
        return _run_on_ray(args)
    from pneumo_onnx.engine.offline.batch import output_format, run_batch
    from pneumo_onnx.engine.runtime.engine import decode_workers
    from pneumo_onnx.engine.runtime.isolated import decode_sandbox

    check_batch_options(args.batch_size, args.workers)
    output_format(Path(args.output))
    # Forked before the model loads (its threads would make forking unsafe): ready at once.
    with decode_sandbox(decode_workers(args.workers), fork=True) as sandbox:
        engine = load_engine(args)
        summary = run_batch(
            engine,
            Path(args.folder),
            Path(args.output),
            recursive=args.recursive,
            batch_size=args.batch_size,
            workers=args.workers,
            threshold=args.threshold,
            resume=args.resume,
            overwrite=args.overwrite,
            sandbox=sandbox,
        )
    counts = ", ".join(f"{label} {n}" for label, n in sorted(summary.counts.items())) or "none"
    notes = sys.stderr if args.output == STDIO else sys.stdout  # stdout holds the CSV alone
    print(
        f"scored {summary.total - len(summary.errors)} of {summary.total} images in "
        f"{summary.seconds:.1f} s ({summary.rate:.1f} img/s): {counts}; "
        f"{len(summary.errors)} errors; {summary.skipped} skipped (already in {args.output})",
        file=notes,
    )
    for path, message in summary.errors:
        print(f"  unreadable: {path}: {message}", file=notes)
    if args.report is not None:
        from pneumo_onnx.engine.explain.report import write_report

        held = write_report(
            engine,
            Path(args.output),
            Path(args.report),
            heatmaps=args.report_heatmaps,
            seconds=summary.seconds,
            workers=args.workers,
        )
        print(
            f"wrote {args.report}: {held['rows']} rows, {held['thumbnails']} thumbnails, "
            f"{held['heatmaps']} heatmaps, {held['bytes'] / 1e6:.1f} MB"
        )
    return EXIT_FAILED if summary.errors else EXIT_OK


def _run_on_ray(args: argparse.Namespace) -> int:
    from pneumo_onnx.engine.offline.ray import run_ray_batch

    if args.resume:
        raise UsageError("--resume works on local runs only; with --ray, rerun with --overwrite")
    start = time.perf_counter()
    counts, errors = run_ray_batch(
        Path(args.folder),
        Path(args.output),
        address=args.ray,
        recursive=args.recursive,
        overwrite=args.overwrite,
        model=args.model,
        variant=args.variant,
        device=args.device,
        preprocessing=args.preprocessing,
        threshold=args.threshold,
        batch_size=args.batch_size,
        concurrency=args.workers,
    )
    seconds = time.perf_counter() - start
    total = sum(counts.values()) + len(errors)
    summary = ", ".join(f"{label} {n}" for label, n in sorted(counts.items())) or "none"
    print(
        f"scored {total - len(errors)} of {total} images on Ray in {seconds:.1f} s "
        f"({total / seconds:.1f} img/s): {summary}; {len(errors)} errors; wrote {args.output}"
    )
    for path, message in errors:
        print(f"  unreadable: {path}: {message}")
    return EXIT_FAILED if errors else EXIT_OK
