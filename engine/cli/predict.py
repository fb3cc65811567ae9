"""`pneumo predict`: score images, print one line (or one JSON row) each; heatmaps on request."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import BinaryIO

from pneumo_onnx.engine.cli.options import (
    STDIO,
    Subparsers,
    add_json_option,
    add_model_options,
    add_threshold_option,
    command,
    json_target,
    load_engine,
    write_json,
)
from pneumo_onnx.engine.errors import EXIT_FAILED, EXIT_OK, UsageError
from pneumo_onnx.engine.explain import DEFAULT_GRID, MAX_GRID, METHODS
from pneumo_onnx.engine.runtime.results import Row, Scored, to_row


def add(sub: Subparsers) -> None:
    p = command(
        sub,
        "predict",
        help="score chest X-ray images: NORMAL or PNEUMONIA",
        description="Score images (JPEG, PNG, BMP, TIFF, DICOM with the 'dicom' extra). "
        "Exit 1 if any image could not be scored, 2 if a named file does not exist.",
    )
    p.add_argument(
        "images", nargs="*", metavar="IMAGE", help="image files; - reads one image from stdin"
    )
    p.add_argument("--image", action="append", default=[], help=argparse.SUPPRESS)  # seed CLI
    add_threshold_option(p)
    add_json_option(p, "the result rows, a list")
    add_heatmap_options(p)
    add_model_options(p)
    p.set_defaults(handler=run)


def add_heatmap_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--heatmap",
        default=None,
        metavar="OUT_DIR",
        help="also write IMAGE.heatmap.png per image: the X-ray with where the model looked",
    )
    p.add_argument(
        "--heatmap-method",
        default=METHODS[0],
        choices=METHODS,
        help="cam: class activation map, one model run; occlusion: any model, grid^2 extra "
        "runs; auto: cam where the model has it, else occlusion",
    )
    p.add_argument(
        "--occlusion-grid",
        type=int,
        default=DEFAULT_GRID,
        metavar="N",
        help=f"occlusion raster (2-{MAX_GRID})",
    )
    p.add_argument(
        "--heatmap-negative",
        action="store_true",
        help="also draw the evidence against PNEUMONIA (blue); default: evidence for it only",
    )


def run(args: argparse.Namespace) -> int:
    images = [*args.images, *args.image]
    check_named(images)
    if args.heatmap is not None and STDIO in images:
        raise UsageError("--heatmap reads each image twice: name image files, not - (stdin)")
    target = json_target(args)
    sources = [read_stdin() if name == STDIO else name for name in images]
    engine = load_engine(args)
    if args.heatmap is not None:
        from pneumo_onnx.engine.explain.heatmap import check_method

        check_method(engine, args.heatmap_method, args.occlusion_grid)
    rows: list[Row] = []
    scored: list[tuple[str, Scored]] = []
    for index, result in engine.stream(sources, args.threshold, batch_size=16):
        rows.append(to_row(images[index], result))
        if "error" in result:
            print(f"error: {result['error']}", file=sys.stderr)
            continue
        scored.append((images[index], result))
        if target != STDIO:
            print(
                f"{images[index]}: {result['prediction']} (confidence "
                f"{result['confidence']:.3f}, raw score {result['raw_score']:.4f}, threshold "
                f"{result['threshold']:g})"
            )
    if target is not None:
        write_json(target, rows)
    if args.heatmap is not None:
        from pneumo_onnx.engine.explain.overlay import write_overlays

        written = write_overlays(
            engine,
            scored,
            Path(args.heatmap),
            args.heatmap_method,
            args.occlusion_grid,
            negative=args.heatmap_negative,
        )
        print(f"wrote {len(written)} heatmaps to {args.heatmap}", file=sys.stderr)
    return EXIT_FAILED if len(scored) < len(rows) else EXIT_OK


def check_named(images: list[str]) -> None:
    """Every named image exists and is a file, and stdin is named at most once: a usage error
    (exit 2) listing every problem before the model loads, not a failed image."""
    if not images:
        raise UsageError("name at least one image: pneumo predict IMAGE...")
    problems = []
    for name in images:
        if name == STDIO:
            continue
        path = Path(name)
        if path.is_dir():
            problems.append(f"{name} is a folder (pneumo batch scores a folder)")
        elif not path.exists():
            problems.append(f"{name}: no such file")
    if images.count(STDIO) > 1:
        problems.append("- (stdin) is named more than once: it holds one image")
    if problems:
        raise UsageError("; ".join(problems))


def read_stdin() -> BinaryIO:
    """The one image piped to `pneumo predict -`, named `stdin` in error messages."""
    from pneumo_onnx.engine.runtime.decoders import named_bytes

    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("- reads an image from stdin: pipe one in (pneumo predict - < scan.jpeg)")
    return named_bytes(sys.stdin.buffer.read(), "stdin")
