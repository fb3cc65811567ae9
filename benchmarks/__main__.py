"""`python -m benchmarks`: one harness for every figure, CPU and GPU, each engine row measured
against what a user would pick instead, in the same run.

    python -m benchmarks [--suite model,pipeline,serve,startup] [--images DIR] [--device cpu]
        [--threads N] [--repeats 3] [--out build/bench] [--label cpu]

Suites: model, pipeline, serve, startup (the default set), conversion, ray, limits (the server's
memory under the largest requests its limits allow), peers (`pneumo serve` against FastAPI,
PyTriton, BentoML and LitServe serving the same model, each in its own cached venv), or `all`.
Writes bench-<label>-<time>.json (everything, machine-readable), .md (tables) and .png (chart)
under --out. A suite whose dependency is missing is reported as skipped with the reason; a
suite that fails is reported as failed (exit 1) and the others still run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import environment, report
from benchmarks.suites import Context, Skip
from benchmarks.timing import ProcessFailed
from pneumo_onnx.engine.errors import PneumoError
from pneumo_onnx.engine.offline.machine import machine

DEFAULT_SUITES = ("model", "pipeline", "serve", "startup")
ALL_SUITES = (*DEFAULT_SUITES, "conversion", "ray", "limits", "peers")
SERVE_TARGETS = ("pneumo", "flask-keras", "pneumo-workers2", "pneumo-ray2")
PEER_NAMES = ("fastapi", "pytriton", "bentoml", "litserve")  # benchmarks.peer_envs.PEERS


class BenchUsageError(Exception):
    """A bad option: printed as `error: ...`, exit code 2."""


def _list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = list(allowed) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        raise BenchUsageError(
            f"{what}: unknown {unknown or text!r}; choose from {', '.join(allowed)}"
        )
    return list(dict.fromkeys(items))


def _positive_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise BenchUsageError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise BenchUsageError(f"{what}: expected integers >= 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument(
        "--suite",
        default=",".join(DEFAULT_SUITES),
        help=f"comma list of {', '.join(ALL_SUITES)}, or all",
    )
    p.add_argument(
        "--images",
        default=None,
        help="folder of X-rays (default: ../shared/data/fullres, else the shipped samples)",
    )
    p.add_argument("--max-images", type=int, default=None, help="use only the first N images")
    p.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"), help="engine rows on this device"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="compute threads for every runtime (default: all cores)",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="timed repeats (default 3); min and median reported"
    )
    p.add_argument(
        "--warmup", type=int, default=2, help="warm-up calls per row, excluded (default 2)"
    )
    p.add_argument("--batch-sizes", default="1,8,32,128", help="model suite batch sizes")
    p.add_argument("--requests", type=int, default=400, help="serve suite: requests per server")
    p.add_argument("--concurrency", type=int, default=16, help="serve suite: concurrent clients")
    p.add_argument(
        "--serve-targets",
        default="pneumo,flask-keras",
        help=f"some of {', '.join(SERVE_TARGETS)}, or all",
    )
    p.add_argument(
        "--peers", default="all", help=f"peers suite: some of {', '.join(PEER_NAMES)}, or all"
    )
    p.add_argument(
        "--peer-concurrency", default="8,16", help="peers suite: concurrent clients, each run"
    )
    p.add_argument(
        "--compare-checkout",
        default=None,
        metavar="DIR",
        help="another pneumo-onnx checkout (a commit before a change, e.g. from git worktree): "
        "serve and pipeline also run its server and its pneumo batch, in the same run",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="serve and pneumo batch rows: runs of each, in alternating order (median kept)",
    )
    p.add_argument("--out", default="build/bench", help="folder for the JSON, Markdown and PNG")
    p.add_argument(
        "--label", default=None, help="names the run in files and titles (default: the device)"
    )
    return p


def select_images(args: argparse.Namespace, workdir: Path) -> tuple[Path, list[Path]]:
    """The folder every suite reads; with --max-images, a folder of links to the first N."""
    from pneumo_onnx.engine.runtime.listing import list_images

    folder = environment.image_folder(args.images)
    if not folder.is_dir():
        raise BenchUsageError(f"--images: {folder} is not a folder")
    images = list_images(folder)
    if not images:
        raise BenchUsageError(f"--images: no images (.jpg .jpeg .png .bmp .tif) in {folder}")
    if args.max_images is not None:
        if args.max_images < 1:
            raise BenchUsageError(f"--max-images must be at least 1, got {args.max_images}")
        subset = workdir / "images"
        subset.mkdir()
        for i, p in enumerate(images[: args.max_images]):  # keep names unique across classes
            (subset / f"{i:04d}-{p.name}").symlink_to(p.resolve())
        return subset, list_images(subset)
    return folder, images


def run_suite(name: str, ctx: Context) -> dict[str, Any]:
    start = time.perf_counter()
    module = importlib.import_module(f"benchmarks.suites.{name}")
    try:
        result = {"status": "ok", **module.run(ctx)}
    except Skip as e:
        result = {"status": "skipped", "reason": str(e)}
    except (ProcessFailed, PneumoError, OSError, RuntimeError, subprocess.SubprocessError) as e:
        logging.getLogger(__name__).exception("suite %s failed", name)
        result = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return bench(args, argv if argv is not None else sys.argv[1:])
    except BenchUsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def bench(args: argparse.Namespace, argv: list[str]) -> int:
    suites = _list(args.suite, ALL_SUITES, "--suite")
    targets = _list(args.serve_targets, SERVE_TARGETS, "--serve-targets")
    batches = _positive_ints(args.batch_sizes, "--batch-sizes")
    peers = _list(args.peers, PEER_NAMES, "--peers")
    peer_concurrency = _positive_ints(args.peer_concurrency, "--peer-concurrency")
    compare = Path(args.compare_checkout).resolve() if args.compare_checkout else None
    if compare is not None and not (compare / "engine" / "cli" / "__init__.py").is_file():
        raise BenchUsageError(f"--compare-checkout: {compare} is not a pneumo-onnx checkout")
    for opt in ("threads", "requests", "concurrency", "repeats", "rounds"):
        value = getattr(args, opt)
        if value is not None and value < 1:
            raise BenchUsageError(f"--{opt} must be at least 1, got {value}")
    if args.warmup < 0:
        raise BenchUsageError(f"--warmup must be 0 or more, got {args.warmup}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    label = args.label or args.device
    started = dt.datetime.now().astimezone()
    stem = out / f"bench-{label}-{started:%Y%m%d-%H%M%S}"
    with tempfile.TemporaryDirectory(prefix="pneumo-bench-") as tmp:
        folder, images = select_images(args, Path(tmp))
        ctx = Context(
            images=images,
            folder=folder,
            workdir=Path(tmp),
            threads=args.threads or os.cpu_count() or 1,
            repeats=args.repeats,
            warmup=args.warmup,
            device=args.device,
            batches=batches,
            requests=args.requests,
            concurrency=args.concurrency,
            serve_targets=targets,
            compare=compare,
            rounds=args.rounds,
            peers=peers,
            peer_concurrency=peer_concurrency,
        )
        run: dict[str, Any] = {
            "schema": "pneumo-bench/1",
            "label": label,
            "started": started.isoformat(timespec="seconds"),
            "command": "python -m benchmarks " + shlex.join(argv),
            "machine": machine(),
            "versions": environment.versions(),
            "model": environment.model_facts(),
            "images": {
                "folder": str(args.images or environment.image_folder(None)),
                "count": len(images),
            },
            "settings": {
                "threads": ctx.threads,
                "repeats": ctx.repeats,
                "warmup": ctx.warmup,
                "device": ctx.device,
                "batch_sizes": batches,
                "requests": ctx.requests,
                "concurrency": ctx.concurrency,
                "rounds": ctx.rounds,
                "peers": peers,
                "peer_concurrency": peer_concurrency,
                "compared_checkout": str(compare) if compare else None,
            },
            "suites": {},
        }
        for name in suites:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            run["suites"][name] = run_suite(name, ctx)
            print(
                f"[bench] {name}: {run['suites'][name]['status']} "
                f"({run['suites'][name]['seconds']} s)",
                file=sys.stderr,
                flush=True,
            )
    run["chart"] = report.chart(run, stem.with_suffix(".png"))
    stem.with_suffix(".json").write_text(json.dumps(run, indent=2) + "\n")
    text = report.markdown(run)
    stem.with_suffix(".md").write_text(text + "\n")
    print(text)
    print(f"[bench] wrote {stem}.json, .md, and chart: {run['chart']}", file=sys.stderr)
    return 1 if any(s["status"] == "failed" for s in run["suites"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
