"""`pneumo bench`: model-only and end-to-end speed of a model on this machine, and how close
the pipeline comes to its ceiling; a table on stdout, the whole report with `--json`."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any, TextIO

from pneumo_onnx.engine.cli.options import (
    STDIO,
    Subparsers,
    add_json_option,
    add_preprocessing_option,
    command,
    json_target,
    positive_float,
    write_json,
)
from pneumo_onnx.engine.errors import EXIT_FAILED, EXIT_OK
from pneumo_onnx.engine.repository.variants import VARIANT_FILES
from pneumo_onnx.engine.runtime.choices import DEVICES


def add(sub: Subparsers) -> None:
    p = command(
        sub,
        "bench",
        help="measure a model's speed here: model only, end to end, and the ceiling",
        description="Measure a model on this machine: the model alone per batch size, image "
        "files to results as `pneumo batch` runs them, one image at a time, and the ideal "
        "pipeline rate from the decode-only and model-only rates of the same run. Exit 1 if "
        "a variant or an image failed.",
    )
    p.add_argument("model", nargs="?", default=None, help="model file or folder (default: shipped)")
    p.add_argument(
        "--device",
        choices=DEVICES,
        default=None,
        help="execution provider (default: every one this onnxruntime offers)",
    )
    p.add_argument(
        "--variant",
        choices=(*VARIANT_FILES, "all"),
        default=None,
        help="which file of a model folder (default fp32); all: every one onnxruntime can load",
    )
    p.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help="your X-rays (at most 200 used, sampled evenly; default: the shipped samples)",
    )
    p.add_argument(
        "--batch-sizes",
        type=batch_sizes,
        default=None,
        metavar="1,8,32",
        help="model-only batch sizes (default: 1,8,32)",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="the pipeline's batch size (default: 32)"
    )
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: cores)")
    p.add_argument("--workers", type=int, default=None, help="decode threads (default: cores)")
    p.add_argument(
        "--seconds",
        type=positive_float,
        default=None,
        metavar="S",
        help="timed seconds per figure, warm-up excluded (default: 2)",
    )
    add_preprocessing_option(p)
    add_json_option(p, "the full report")
    p.set_defaults(handler=run)


def batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1 like 1,8,32, got {text!r}")
    return sizes


def run(args: argparse.Namespace) -> int:
    from pneumo_onnx.engine.offline.bench import Plan, run_bench

    target = json_target(args)
    chosen = {  # options left out keep the Plan's defaults
        "batch_sizes": args.batch_sizes,
        "batch_size": args.batch_size,
        "seconds": args.seconds,
    }
    plan = Plan(
        model=args.model,
        devices=(args.device,) if args.device else (),
        variant=args.variant,
        images=args.images,
        threads=args.threads,
        workers=args.workers,
        preprocessing=args.preprocessing,
        **{k: v for k, v in chosen.items() if v is not None},
    )
    progress = StepProgress(sys.stderr)

    def update(done: int, total: int, what: str) -> None:
        if done == 0 and args.images is None:  # said once the model and images are found
            print(
                "pneumo bench: no --images: measuring on the 6 sample X-rays shipped with "
                "pneumo-onnx; pass --images DIR to measure on your own",
                file=sys.stderr,
            )
        progress.update(done, total, what)

    try:
        report = run_bench(plan, update)
    finally:
        progress.close()
    if target != STDIO:
        print(render(report))
    if target is not None:
        write_json(target, report)
    failed = report["images"]["unreadable"] or any("error" in r for r in report["runs"])
    return EXIT_FAILED if failed else EXIT_OK


class StepProgress:
    """`[3/12] cpu fp32: model only, batch 8` on one line of a terminal; silent when piped."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.width = 0

    def update(self, done: int, total: int, what: str) -> None:
        if not self.enabled:
            return
        line = f"[{done}/{total}] {what}"
        self.stream.write("\r" + line.ljust(self.width))
        self.width = len(line)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def render(r: dict[str, Any]) -> str:
    """The report as a few aligned tables and the ceiling's arithmetic, for people."""
    s, m, img = r["settings"], r["model"], r["images"]
    cpu, gpu = r["machine"]["cpu"], r["machine"]["gpu"]
    first = next(iter(m["files"].values()))
    name = f"{m['name']} version {m['version']}" if m["name"] else Path(m["path"]).name
    where = (
        f"the {img['used']} sample X-rays shipped with pneumo-onnx (pass --images DIR for yours)"
        if img["shipped_samples"]
        else f"{img['used']} of {img['found']} in {img['folder']}"
    )
    lines = [
        f"model:    {name}: {first['file']} (sha256 {first['sha256'][:16]}...), "
        f"preprocessing {s['preprocessing']}",
        f"images:   {where}, median {img['median_bytes'] / 1e3:.0f} KB"
        + (f"; {len(img['unreadable'])} unreadable, left out" if img["unreadable"] else ""),
        f"machine:  {cpu['model']}, {s['cores']} cores ({' '.join(cpu['flags']) or 'no SIMD'})"
        f", GPU: {gpu['name'] if gpu and gpu.get('name') else 'none'}; load average "
        f"{_load(r['machine']['load_average'])} before, {_load(r['load_average_end'])} after",
        "versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
        f"settings: {s['seconds']:g} s per figure after warm-up; decode threads "
        f"{s['workers']}; pipeline batch {s['batch_size']}; {r['seconds']:.0f} s in all",
        "",
        "model only: images/s (per-call latency p50 / p99 ms)",
    ]
    batches = s["model_batch_sizes"]
    ok = [run for run in r["runs"] if "error" not in run]
    rows = [
        [run["device"], run["variant"], str(run["threads"])]
        + [
            f"{x['images_per_second']:.1f} ({_p(x, 'p50')}/{_p(x, 'p99')})"
            for x in run["model_only"]
        ]
        for run in ok
    ]
    lines += table(["device", "variant", "threads", *(f"batch {b}" for b in batches)], rows)
    lines += [
        "",
        "pipeline: files to results through Engine.stream, as pneumo batch, images/s; "
        "one image: Engine.predict, ms",
    ]
    rows = [
        [
            run["device"],
            run["variant"],
            f"{run['decode_only']['images_per_second']:.1f}",
            f"{run['model_only'][batches.index(s['batch_size'])]['images_per_second']:.1f}",
            f"{run['ceiling']['ideal_images_per_second']:.1f}",
            f"{run['pipeline']['images_per_second']:.1f}",
            f"{run['ceiling']['pipeline_percent_of_ideal']:.1f}%",
            "/".join(f"{run['one_image_latency_ms'][k]:.1f}" for k in ("p50", "p95", "p99")),
        ]
        for run in ok
    ]
    header = ["device", "variant", "decode only", f"model @{s['batch_size']}", "ideal"]
    lines += table([*header, "pipeline", "of ideal", "one image p50/p95/p99"], rows)
    lines += explain(ok)
    for run in r["runs"]:
        if "error" in run:
            lines.append(f"{run['device']} {run['variant']}: error: {run['error']}")
    lines += [f"unreadable: {u['image']}: {u['error']}" for u in img["unreadable"]]
    return "\n".join(lines)


WIDTH = 100  # terminal columns for the prose under the tables
FORMULAS = {
    "cpu": "ideal = c / (d + m): c cores; d = decode threads / decode-only img/s, the "
    "core-seconds decoding takes per image; m = onnxruntime threads / model-only img/s at the "
    "pipeline's batch, the model's core-seconds per image; decoding and the model share the "
    "cores. Above 100%: overlapping them did better than each stage alone on all cores.",
    "cuda": "ideal = min(c / d, model img/s): decoding on the c cores, the model beside them "
    "on the GPU.",
}


def explain(runs: list[dict[str, Any]]) -> list[str]:
    """The ceiling's formula once per kind of device, then each run's numbers and what they
    mean."""
    lines: list[str] = []
    for device in dict.fromkeys(run["device"] for run in runs):
        lines += ["", *textwrap.wrap(FORMULAS["cpu" if device == "cpu" else "cuda"], WIDTH)]
        for run in (r for r in runs if r["device"] == device):
            c = run["ceiling"]
            d, ideal = c["decode_core_ms_per_image"], c["ideal_images_per_second"]
            if device == "cpu":
                sums = f"{c['cores']} / ({d:.2f} + {c['model_core_ms_per_image']:.2f} ms)"
            else:
                rate = next(
                    x for x in run["model_only"] if x["batch"] == run["pipeline"]["batch_size"]
                )
                sums = f"min({c['cores']} / {d:.2f} ms, {rate['images_per_second']:.1f} img/s)"
            lines.append(f"{device} {run['variant']}: ideal = {sums} = {ideal:.1f} img/s")
            if "cpu_ms_per_image" in c:
                ms = c["cpu_ms_per_image"]
                lines += textwrap.wrap(
                    f"CPU time per image: decoding {ms['decode']:.2f} + the model "
                    f"{ms['model']:.2f} = {ms['decode'] + ms['model']:.2f} ms alone, "
                    f"{ms['pipeline']:.2f} ms in the pipeline "
                    f"({c['pipeline_cpu_percent_of_stages']:.0f}%), which kept "
                    f"{c['pipeline_cores_busy']:.2f} of {c['cores']} cores busy",
                    WIDTH,
                    initial_indent="  ",
                    subsequent_indent="    ",
                )
            for line in c["advice"]:
                lines += textwrap.wrap(line, WIDTH, initial_indent="  ", subsequent_indent="    ")
    return lines


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    return [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]


def _p(row: dict[str, Any], key: str) -> str:
    return f"{row['latency_ms'][key]:.1f}"


def _load(values: list[float] | None) -> str:
    return "-" if values is None else f"{values[0]:.2f}"
