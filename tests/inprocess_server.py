"""The server's parts as `pneumo serve` builds them (`app._build`), started for real in this
process (decode worker processes, the batcher's thread, the model loaded and warmed up) with
no HTTP in front, on a model repository in a test's tmp_path: the data-plane tests' server."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pneumo_onnx.engine.repository.resolve import default_model_dir
from pneumo_onnx.engine.serve.app import _build
from pneumo_onnx.engine.serve.config import ServeConfig
from pneumo_onnx.engine.serve.state import ServerState

NAME = "pneumonia"


def shipped_repo(tmp_path: Path) -> Path:
    """A repository of the shipped versions 1 and 2 (two different models)."""
    root = tmp_path / "repo"
    for version in ("1", "2"):
        shutil.copytree(default_model_dir() / version, root / NAME / version)
    return root


@contextlib.asynccontextmanager
async def serving(repo: Path, **settings: Any) -> AsyncIterator[ServerState]:
    """Started on the running loop with one decode worker (the machine may have two cores);
    closed as the server closes, every prediction written to its log."""
    state = _build(
        ServeConfig(model_repo=repo, state_dir=repo.parent / "state", decode_workers=1, **settings)
    )
    await state.service.start()
    try:
        yield state
    finally:
        await state.service.close()
        assert state.prediction_log.close_within(5) == 0


def batches(state: ServerState) -> tuple[float, float]:
    """(model runs, images scored in them) so far, from the batcher's own metrics."""
    registry = state.metrics.registry
    runs = registry.get_sample_value("pneumo_batch_size_count") or 0.0
    return runs, registry.get_sample_value("pneumo_batch_size_sum") or 0.0


def runs_of_at_most(state: ServerState, size: int) -> float:
    """Model runs of at most `size` images so far (a bucket of the batch-size histogram)."""
    labels = {"le": f"{float(size)}"}
    return state.metrics.registry.get_sample_value("pneumo_batch_size_bucket", labels) or 0.0


def cache_hits(state: ServerState) -> float:
    """Hits counted by the server's own metric (no sample yet: none)."""
    hits = state.metrics.registry.get_sample_value("pneumo_cache_lookups_total", {"result": "hit"})
    return hits or 0.0
