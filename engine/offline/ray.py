"""Batch scoring on a Ray cluster with Ray Data (the `ray` extra).

    import ray
    from engine.offline.ray import score_dataset
    ds = ray.data.read_binary_files("s3://bucket/xrays/", include_paths=True)
    score_dataset(ds, concurrency=8).write_parquet("s3://bucket/results/")

Each actor of the pool holds one Engine (one onnxruntime session) and one decode worker process
(memory-capped, as `pneumo batch` decodes) and scores whole batches; the rows have the same
columns and per-file errors as `pneumo batch`. Nothing else in the package imports Ray.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from pneumo_onnx.engine.errors import MissingExtraError, UsageError, first_line
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.isolated import decode_sandbox
from pneumo_onnx.engine.runtime.listing import find_images
from pneumo_onnx.engine.runtime.results import ROW_COLUMNS, to_row

OUTPUT_FORMATS = (".parquet", ".csv")


def require_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise MissingExtraError("ray", "scoring on Ray (--ray)", "ray[data]") from e
    return ray


class Scorer:
    """A Ray Data actor: loads the engine once, then scores batches of encoded images,
    decoded in a worker process of its own (`decode_sandbox`), as `pneumo batch` decodes: a
    file built to exhaust a decoder's memory, hang or crash it is its own error row, not the
    actor's death."""

    def __init__(self, engine_kwargs: dict[str, Any], threshold: float | None) -> None:
        self.engine = Engine.load(**engine_kwargs)
        self.threshold = threshold
        self.sandbox = decode_sandbox(1)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        paths = [str(p) for p in batch["path"]]
        images = [_named(bytes(b), p) for b, p in zip(batch["bytes"], paths, strict=True)]
        rows: dict[str, list[Any]] = {c: [] for c in ROW_COLUMNS}
        size = max(1, len(images))
        for index, result in self.engine.stream(images, self.threshold, size, 1, self.sandbox):
            row = to_row(paths[index], result)
            for column in ROW_COLUMNS:
                rows[column].append(row[column])
        return rows


def _named(data: bytes, path: str) -> io.BytesIO:
    """Bytes that error messages name like the local run does (by the file's name)."""
    f = io.BytesIO(data)
    f.name = path
    return f


def score_dataset(
    ds: Any,
    model: str | os.PathLike | None = None,
    variant: str | None = None,
    device: str = "cpu",
    preprocessing: str = "auto",
    threshold: float | None = None,
    batch_size: int = 32,
    concurrency: int | None = None,
) -> Any:
    """Score a Ray Dataset with `bytes` and `path` columns (`read_binary_files(...,
    include_paths=True)`); returns a lazy Dataset of result rows.

    `model` must be readable at the same path on every worker (shared storage), or None for
    the default model shipped in the package. device="cuda" gives each actor one GPU.
    """
    ray = require_ray()
    Engine.load(model, device="cpu", variant=variant)  # fail here, not in every actor
    kwargs = {"model": model, "variant": variant, "device": device, "preprocessing": preprocessing}
    return ds.map_batches(
        Scorer,
        fn_constructor_kwargs={"engine_kwargs": kwargs, "threshold": threshold},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=concurrency or max(1, (os.cpu_count() or 2) // 2)),
        num_gpus=1 if device == "cuda" else 0,
    )


def run_ray_batch(
    folder: Path,
    output: Path,
    address: str,
    recursive: bool,
    overwrite: bool,
    **score: Any,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """`pneumo batch --ray`: list locally, read/score/write on Ray. Returns counts and errors."""
    ray = require_ray()
    if output.suffix.lower() not in OUTPUT_FORMATS:
        raise UsageError(f"-o {output}: with --ray, expected a .parquet or .csv folder name")
    if output.exists() and not overwrite:
        raise UsageError(f"{output} exists: pass --overwrite to replace it (no --resume on Ray)")
    paths = [str(p) for p in find_images(folder, recursive=recursive)]
    if not ray.is_initialized():
        try:
            ray.init(
                address=None if address == "local" else address,
                log_to_driver=False,
                logging_level=logging.WARNING,
                include_dashboard=False,
            )
        except Exception as e:  # ConnectionError, RuntimeError, ValueError: no common base
            raise UsageError(f"cannot start or reach Ray at '{address}': {first_line(e)}") from e
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ds = score_dataset(ray.data.read_binary_files(paths, include_paths=True), **score)
    ds = ds.materialize()
    if output.exists():
        shutil.rmtree(output)
    if output.suffix.lower() == ".parquet":
        ds.write_parquet(str(output))
    else:
        ds.write_csv(str(output))
    counts: dict[str, int] = {}
    errors: list[tuple[str, str]] = []
    for row in ds.select_columns(["image_path", "prediction", "error"]).iter_rows():
        if row["error"]:
            errors.append((row["image_path"], row["error"]))
        else:
            counts[row["prediction"]] = counts.get(row["prediction"], 0) + 1
    return counts, sorted(errors)
