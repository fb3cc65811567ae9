"""The `pneumo` command line. Errors become `error: message` and an exit code here, only here.

Exit codes: 0 ok, 1 something checked or processed failed, 2 usage error.
TensorFlow is imported only inside `convert` and `validate --against`, never at start-up.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from engine import __version__
from engine.errors import EXIT_FAILED, EXIT_OK, PneumoError, UsageError
from engine.repository import VARIANT_FILES
from engine.serve.commands import add_monitor, add_serve

VARIANTS = tuple(VARIANT_FILES)


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
    _add_predict(sub)
    _add_batch(sub)
    _add_evaluate(sub)
    _add_info(sub)
    _add_convert(sub)
    _add_validate(sub)
    add_serve(sub)
    add_monitor(sub)
    return parser


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        metavar="M",
        help="an .onnx file or a model repository folder (default: the shipped model)",
    )
    p.add_argument(
        "--variant",
        default=None,
        choices=VARIANTS,
        help="which file of a repository version to run (default fp32)",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="execution provider")
    p.add_argument(
        "--preprocessing",
        default="fast",
        choices=("fast", "reference"),
        help="fast (default): reduced-scale JPEG decode; reference: as in training",
    )
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: cores)")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="score chest X-ray images: NORMAL or PNEUMONIA",
        description="Score images (JPEG, PNG, BMP, TIFF, DICOM with the 'dicom' extra). "
        "Exit 1 if any image could not be scored.",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files")
    p.add_argument("--image", action="append", default=[], help=argparse.SUPPRESS)  # seed CLI
    p.add_argument(
        "--threshold",
        type=_unit_float,
        default=None,
        help="decision threshold (default: the model's, usually 0.5)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list")
    _add_heatmap_options(p)
    _add_model_options(p)
    p.set_defaults(handler=_run_predict)


def _add_heatmap_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--heatmap",
        default=None,
        metavar="OUT_DIR",
        help="also write IMAGE.heatmap.png per image: the X-ray with where the model looked",
    )
    p.add_argument(
        "--heatmap-method",
        default="cam",
        choices=("cam", "occlusion", "auto"),
        help="cam (default): class activation map, one model run; occlusion: any model, "
        "grid^2 extra runs; auto: cam where the model has it, else occlusion",
    )
    p.add_argument(
        "--occlusion-grid", type=int, default=8, metavar="N", help="occlusion raster (2-16)"
    )


def _add_batch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="score a folder into results.csv or results.jsonl (resumable)",
        description="Score every image in a folder. Rows are flushed after each model batch; "
        "--resume continues an interrupted run. Exit 1 if any image could not be scored.",
    )
    p.add_argument("folder", metavar="DIR")
    p.add_argument("-o", "--output", required=True, metavar="results.csv|results.jsonl")
    p.add_argument("--recursive", action="store_true", help="include subfolders")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="decode threads (default: cores)")
    p.add_argument("--threshold", type=_unit_float, default=None)
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
        help="heatmaps of the N top-scoring images in the report (default 12; 0: none)",
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
    _add_model_options(p)
    p.set_defaults(handler=_run_batch)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="metrics on a labelled folder (NORMAL/, PNEUMONIA/)",
        description="Score every image under DIR/NORMAL and DIR/PNEUMONIA and report ROC AUC, "
        "accuracy, sensitivity, specificity, precision, F1, confusion matrix, Brier score and "
        "the threshold that reaches a target sensitivity.",
    )
    p.add_argument("folder", metavar="DIR")
    p.add_argument("--threshold", type=_unit_float, default=None)
    p.add_argument("--target-sensitivity", type=_unit_float, default=0.95)
    p.add_argument("--json", default=None, metavar="out.json", help="write the metrics as JSON")
    p.add_argument(
        "--plots",
        default=None,
        metavar="OUT_DIR",
        help="write ROC, precision-recall, confusion, calibration and histogram PNGs "
        "(the 'report' extra)",
    )
    _add_model_options(p)
    p.set_defaults(handler=_run_evaluate)


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="model contract, variants, providers, versions")
    p.add_argument("model", nargs="?", default=None, help="model file or folder (default: shipped)")
    p.add_argument("--variant", default=None, choices=VARIANTS)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_run_info, device="cpu", preprocessing="fast", threads=None)


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
        help="comma list of int8, int8-full, fp16, tflite, tflite-dynamic, ort; or all (default),"
        " none",
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


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    # No spinning even for batch: on few cores, spinning onnxruntime threads starve the
    # decode threads (measured: 150 vs 199 img/s on 2 cores, benchmarks/RESULTS.md).
    from engine.scorer import Engine

    return Engine.load(
        args.model,
        device=args.device,
        variant=args.variant,
        preprocessing=args.preprocessing,
        threads=args.threads,
    )


def _run_predict(args: argparse.Namespace) -> int:
    images = [*args.images, *args.image]
    if not images:
        raise UsageError("name at least one image: pneumo predict IMAGE...")
    engine = _load(args)
    if args.heatmap is not None:
        from engine.heatmap import check_method

        check_method(engine, args.heatmap_method, args.occlusion_grid)
    failed = 0
    rows = []
    for index, result in engine.stream(images, args.threshold, batch_size=16):
        rows.append({"image": images[index], **result})
        if "error" in result:
            failed += 1
            print(f"error: {result['error']}", file=sys.stderr)
        elif not args.json:
            print(
                f"{images[index]}: {result['prediction']} (confidence {result['confidence']:.3f},"
                f" raw score {result['raw_score']:.4f}, threshold {result['threshold']:g})"
            )
    if args.json:
        print(json.dumps(rows, indent=2))
    if args.heatmap is not None:
        from engine.heatmap import write_overlays

        scored = [(row["image"], row) for row in rows if "error" not in row]
        written = write_overlays(
            engine, scored, Path(args.heatmap), args.heatmap_method, args.occlusion_grid
        )
        print(f"wrote {len(written)} heatmaps to {args.heatmap}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _run_batch(args: argparse.Namespace) -> int:
    if args.report is not None:
        if args.ray is not None:
            raise UsageError("--report works on local runs only, not with --ray")
        if not 0 <= args.report_heatmaps <= 100:
            raise UsageError(f"--report-heatmaps must be 0-100, got {args.report_heatmaps}")
        from engine.plots import pyplot

        pyplot()  # a missing 'report' extra fails before any scoring
    if args.ray is not None:
        return _run_ray_batch(args)
    from engine.batch import run_batch

    engine = _load(args)
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
    )
    counts = ", ".join(f"{label} {n}" for label, n in sorted(summary.counts.items())) or "none"
    print(
        f"scored {summary.total - len(summary.errors)} of {summary.total} images in "
        f"{summary.seconds:.1f} s ({summary.rate:.1f} img/s): {counts}; "
        f"{len(summary.errors)} errors; {summary.skipped} skipped (already in {args.output})"
    )
    for path, message in summary.errors:
        print(f"  unreadable: {path}: {message}")
    if args.report is not None:
        from engine.batch_report import write_report

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


def _run_ray_batch(args: argparse.Namespace) -> int:
    import time

    from engine.ray import run_ray_batch

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


def _run_evaluate(args: argparse.Namespace) -> int:
    from engine.evaluate import evaluate_folder, report_lines, write_json

    if args.plots:
        from engine.plots import pyplot

        pyplot()  # a missing 'report' extra fails before any scoring
    engine = _load(args)
    result = evaluate_folder(engine, Path(args.folder), args.threshold, args.target_sensitivity)
    print("\n".join(report_lines(result)))
    if args.json:
        write_json(result, Path(args.json))
    if args.plots:
        from engine.plots import evaluation_plots

        c = engine.contract
        assert result.labels is not None and result.scores is not None
        written = evaluation_plots(
            result.labels,
            result.scores,
            result.metrics["at_threshold"]["threshold"],
            Path(args.plots),
            (c.negative_label, c.positive_label),
            result.metrics["recommended_threshold"],
        )
        print(f"wrote {len(written)} plots to {args.plots}")
    return EXIT_FAILED if result.errors else EXIT_OK


def _run_info(args: argparse.Namespace) -> int:
    import numpy
    import onnxruntime
    import PIL

    engine = _load(args)
    info = {
        **engine.info(),
        "providers_available": onnxruntime.get_available_providers(),
        "versions": {
            "pneumo-onnx": __version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__,
            "pillow": PIL.__version__,
            "python": platform.python_version(),
        },
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    c = info["contract"]
    i, o = c["input"], c["output"]
    lines = [
        f"model:        {info['model']}",
        f"name:         {info['name'] or '-'}  version {info['version'] or '-'}  "
        f"variant {info['variant']}  (available: {', '.join(info['variants']) or '-'})",
        f"input:        {i['name']} {i['layout']} {i['height']}x{i['width']}x{i['channels']}, "
        f"scaling {i['scaling']}, resize {i['resize_filter']}",
        f"output:       {o['name']} {o['kind']} -> P({c['positive_label']}); "
        f"labels {c['negative_label']}/{c['positive_label']}; threshold {c['threshold']}",
        f"source:       {_source_line(info['source'])}",
        f"parity:       {_parity_line(info['parity'])}",
        f"provider:     {info['provider']} (available: {', '.join(info['providers_available'])})",
        "versions:     " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
    ]
    print("\n".join(lines))
    return EXIT_OK


def _source_line(source: dict | None) -> str:
    if not source:
        return "- (plain ONNX file: no provenance)"
    return f"{source['name']} ({source['format']}, sha256 {source['sha256'][:12]}...)"


def _parity_line(parity: dict | None) -> str:
    if not parity:
        return "- (not recorded)"
    return f"max abs diff {parity['max_abs_diff']:.2e} vs the source on {parity['probes']} probes"


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
