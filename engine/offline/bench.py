"""`pneumo bench`: how fast a model runs on this machine, alone and end to end, and how close
the end-to-end pipeline comes to its ceiling, in one report (a dict the CLI renders and
writes as JSON). Protocol-free: no printing, no argument parsing.

For each device and variant asked for: the model alone per batch size, files to results
through `Engine.stream` (what `pneumo batch` runs), one image at a time through
`Engine.predict`, and the ceiling (`engine.offline.ceiling`) from the decode-only rate and the
model-only rate at the pipeline's batch size, all measured in the same run on the same images.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from pneumo_onnx.engine.errors import PneumoError, UsageError
from pneumo_onnx.engine.offline.bench_images import Prepared, bench_images, pass_images, prepare
from pneumo_onnx.engine.offline.ceiling import ceiling
from pneumo_onnx.engine.offline.machine import load_average, machine, usable_cores, versions
from pneumo_onnx.engine.offline.measure import (
    decode_rate,
    model_calls,
    pipeline_passes,
    predict_calls,
)
from pneumo_onnx.engine.offline.timing import summary_ms, throughput_row
from pneumo_onnx.engine.repository.manifest import sha256_file
from pneumo_onnx.engine.repository.resolve import resolve
from pneumo_onnx.engine.runtime.choices import DEVICES, PREPROCESSING, PROVIDERS
from pneumo_onnx.engine.runtime.engine import (
    DEFAULT_BATCH_SIZE,
    Engine,
    check_batch_options,
    decode_workers,
)

SCHEMA = "pneumo-bench-report/1"
DEFAULT_BATCH_SIZES = (1, 8, 32)
DEFAULT_SECONDS = 2.0
MAX_SECONDS = 600.0
ALL = "all"
ROUNDS = 3  # the ceiling's three figures alternate this many times

Progress = Callable[[int, int, str], None]  # (steps done, steps in all, what runs next)


@dataclass(frozen=True)
class Plan:
    """What one run measures. `variant`: a variant key, `all`, or None (fp32 in a model
    folder, the file itself when a file is named); `devices` empty: every device this
    onnxruntime offers."""

    model: str | None = None
    devices: tuple[str, ...] = ()
    variant: str | None = None
    images: str | None = None
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    batch_size: int = DEFAULT_BATCH_SIZE
    threads: int | None = None
    workers: int | None = None
    seconds: float = DEFAULT_SECONDS
    preprocessing: str = PREPROCESSING[0]

    def check(self) -> None:
        """Every option error before anything is loaded or measured."""
        check_batch_options(self.batch_size, self.workers)
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise UsageError(f"batch sizes must be at least 1, got {list(self.batch_sizes)}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be at least 1, got {self.threads}")
        if not (math.isfinite(self.seconds) and 0 < self.seconds <= MAX_SECONDS):
            raise UsageError(f"seconds must be in (0, {MAX_SECONDS:.0f}], got {self.seconds}")
        unknown = [d for d in self.devices if d not in DEVICES]
        if unknown:
            raise UsageError(f"device must be one of {', '.join(DEVICES)}, got {unknown[0]!r}")

    @property
    def model_batches(self) -> list[int]:
        """The model-only batch sizes: the ones asked for and the pipeline's (the ceiling's)."""
        return sorted({*self.batch_sizes, self.batch_size})


def run_bench(plan: Plan, progress: Progress | None = None) -> dict[str, Any]:
    """Measure everything `plan` asks for; the report holds machine, versions, model files
    with their sha256, images, settings, and one entry per device and variant."""
    plan.check()
    started = dt.datetime.now().astimezone()
    t0 = time.perf_counter()
    host = machine()  # its load average is the one before the run
    images, about_images = bench_images(plan.images)
    engines = [
        (device, engine.model.variant, engine)
        for device in devices(plan.devices)
        for engine in (load(plan, device, v) for v in variants(plan.model, plan.variant))
    ]
    others = len(set(plan.model_batches) - {plan.batch_size})
    total = 1 + len(engines) * (others + 3 * ROUNDS + 1)
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        if progress is not None:
            progress(done, total, what)
        done += 1

    workers = decode_workers(plan.workers)
    prepared = prepare(engines[0][2], images, max(plan.model_batches), workers, tick)
    runs = [measure_engine(d, v, e, prepared, plan, tick) for d, v, e in engines]
    if progress is not None:
        progress(total, total, "done")
    first = engines[0][2].model
    return {
        "schema": SCHEMA,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": host,
        "load_average_end": load_average(),
        "versions": versions(),
        "model": {
            "path": str(first.path),
            "name": first.name,
            "version": first.version,
            "files": {
                v: {
                    "file": e.model.path.name,
                    "sha256": e.model.sha256 or sha256_file(e.model.path),
                }
                for _, v, e in engines
            },
        },
        "images": {
            **about_images,
            "readable": len(prepared.images),
            "unreadable": [{"image": n, "error": m} for n, m in prepared.unreadable],
        },
        "settings": {
            **asdict(plan),
            "devices": sorted({d for d, _, _ in engines}, key=DEVICES.index),
            "variants": list(dict.fromkeys(v for _, v, _ in engines)),
            "model_batch_sizes": plan.model_batches,
            "workers": workers,
            "cores": usable_cores(),
            "rounds": ROUNDS,
            "warmup": "2 calls (model only, one image); 2 x batch size images (pipeline); "
            "one image per thread (decode only, each round); not timed",
        },
        "runs": runs,
    }


def devices(asked: Sequence[str]) -> list[str]:
    """The devices asked for, or every one this onnxruntime offers (CPU at least)."""
    if asked:
        return list(dict.fromkeys(asked))
    available = ort.get_available_providers()
    return [d for d in DEVICES if PROVIDERS[d] in available]


def variants(model: str | None, variant: str | None) -> list[str | None]:
    """The variants to run: the one asked for (None: fp32, or the file named), or with `all`
    every variant of the model's version that onnxruntime can load."""
    if variant != ALL:
        return [variant]
    if model is not None and Path(model).is_file():
        raise UsageError("--variant all runs the files of a model folder; you named a file")
    return list(resolve(model).variants)


def load(plan: Plan, device: str, variant: str | None) -> Engine:
    return Engine.load(
        plan.model,
        device=device,
        variant=variant,
        preprocessing=plan.preprocessing,
        threads=plan.threads,
    )


def measure_engine(
    device: str,
    variant: str,
    engine: Engine,
    prepared: Prepared,
    plan: Plan,
    tick: Callable[[str], None],
) -> dict[str, Any]:
    """Model only per batch size; then the three figures of the ceiling (decode only, model
    only at the pipeline's batch size, the pipeline) in ROUNDS alternating rounds, so that a
    change of load on a shared machine moves all three alike; then one image at a time."""
    name = f"{device} {variant}"
    threads = int(engine.session.get_session_options().intra_op_num_threads)
    workers = decode_workers(plan.workers)
    out: dict[str, Any] = {"device": device, "variant": variant, "provider": engine.provider}
    out["threads"] = threads
    share = plan.seconds / ROUNDS
    items = pass_images(prepared.images, plan.batch_size)
    calls: dict[int, list[float]] = {}
    decode: list[dict[str, Any]] = []
    passes: list[float] = []
    start = 0  # where the next decode-only round starts in the images
    model_cpu: list[float] = []  # process CPU seconds per image, one per round
    pipeline_cpu: list[float] = []
    try:
        for b in plan.model_batches:
            if b != plan.batch_size:
                tick(f"{name}: model only, batch {b}")
                calls[b] = model_calls(engine.session, prepared.tensors, b, plan.seconds)
        calls[plan.batch_size] = []
        for r in range(1, ROUNDS + 1):
            tick(f"{name}: ceiling round {r}/{ROUNDS}: decode only, {workers} threads")
            rotated = prepared.images[start:] + prepared.images[:start]  # go on, not over
            decode.append(decode_rate(engine.preprocess, rotated, share, workers))
            start = (start + decode[-1]["images"]) % len(prepared.images)
            tick(f"{name}: ceiling round {r}/{ROUNDS}: model only, batch {plan.batch_size}")
            if r == 1:  # warm-up calls, outside the CPU time counted below
                model_calls(engine.session, prepared.tensors, plan.batch_size, 0, 2, 0)
            cpu = time.process_time()
            got = model_calls(engine.session, prepared.tensors, plan.batch_size, share, 0)
            model_cpu.append((time.process_time() - cpu) / (len(got) * plan.batch_size))
            calls[plan.batch_size] += got
            tick(f"{name}: ceiling round {r}/{ROUNDS}: pipeline, batch {plan.batch_size}")
            if r == 1:
                pipeline_passes(engine, items, 0, plan.batch_size, workers, 0, 2 * plan.batch_size)
            cpu = time.process_time()
            got = pipeline_passes(engine, items, share, plan.batch_size, workers)
            pipeline_cpu.append((time.process_time() - cpu) / (len(got) * len(items)))
            passes += got
        tick(f"{name}: one image at a time")
        latency = summary_ms(predict_calls(engine, prepared.images, plan.seconds))
    except PneumoError as e:  # e.g. a variant this provider cannot run: the others go on
        out["error"] = e.message
        return out
    rows = {b: throughput_row(c, b) for b, c in calls.items()}
    decode_ips = statistics.median(d["images_per_second"] for d in decode)
    rate = len(items) / statistics.median(passes)
    out["model_only"] = [rows[b] for b in plan.model_batches]
    out["decode_only"] = {
        "images_per_second": round(decode_ips, 1),
        "workers": workers,
        "rounds": decode,
    }
    out["pipeline"] = {
        "batch_size": plan.batch_size,
        "workers": workers,
        "images_per_pass": len(items),
        "passes": len(passes),
        "pass_seconds": [round(s, 4) for s in passes],
        "images_per_second": round(rate, 1),
        "images_per_second_best": round(len(items) / min(passes), 1),
    }
    out["one_image_latency_ms"] = latency
    out["ceiling"] = ceiling(
        device,
        usable_cores(),
        decode_ips,
        workers,
        rows[plan.batch_size]["images_per_second"],
        threads,
        rate,
        cpu_ms={
            "decode": statistics.median(d["cpu_ms_per_image"] for d in decode),
            "model": 1000 * statistics.median(model_cpu),
            "pipeline": 1000 * statistics.median(pipeline_cpu),
        },
    )
    return out
