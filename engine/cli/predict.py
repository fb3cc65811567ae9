"""`pneumo predict`: score images, print one line (or one JSON row) each; heatmaps on request."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pneumo_onnx.engine.cli.options import (
    Subparsers,
    add_model_options,
    command,
    load_engine,
    unit_float,
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
        "Exit 1 if any image could not be scored.",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files")
    p.add_argument("--image", action="append", default=[], help=argparse.SUPPRESS)  # seed CLI
    p.add_argument(
        "--threshold",
        type=unit_float,
        default=None,
        help="decision threshold (default: the model's, usually 0.5)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of result rows")
    p.add_argument(
        "--sr",
        default=None,
        metavar="OUT.dcm|OUT_DIR",
        help="also write a DICOM Structured Report per DICOM image (the 'dicomweb' extra): "
        "one image, the file OUT.dcm; several, OUT_DIR/IMAGE.sr.dcm",
    )
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
    if not images:
        raise UsageError("name at least one image: pneumo predict IMAGE...")
    if args.sr is not None:
        from pneumo_onnx.engine.offline.dicomweb.sr_files import check_sr_inputs

        check_sr_inputs(images)
    engine = load_engine(args)
    if args.heatmap is not None:
        from pneumo_onnx.engine.explain.heatmap import check_method

        check_method(engine, args.heatmap_method, args.occlusion_grid)
    rows: list[Row] = []
    scored: list[tuple[str, Scored]] = []
    for index, result in engine.stream(images, args.threshold, batch_size=16):
        rows.append(to_row(images[index], result))
        if "error" in result:
            print(f"error: {result['error']}", file=sys.stderr)
            continue
        scored.append((images[index], result))
        if not args.json:
            print(
                f"{images[index]}: {result['prediction']} (confidence "
                f"{result['confidence']:.3f}, raw score {result['raw_score']:.4f}, threshold "
                f"{result['threshold']:g})"
            )
    if args.json:
        print(json.dumps(rows, indent=2))
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
    if args.sr is not None:
        from pneumo_onnx.engine.offline.dicomweb.sr_files import write_sr_files

        reports = write_sr_files(engine, scored, Path(args.sr))
        print(f"wrote {len(reports)} Structured Reports to {args.sr}", file=sys.stderr)
    return EXIT_FAILED if len(scored) < len(rows) else EXIT_OK
