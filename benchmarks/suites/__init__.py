"""The benchmark suites. Each is a function `run(ctx) -> dict` returning flat `rows` (one per
measured configuration, with the suite's baseline row among them), `skipped` rows with their
reason, and suite-level figures; a suite that cannot run at all raises `Skip`."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path


class Skip(Exception):
    """The whole suite cannot run here: the message says why (a missing extra, no GPU...)."""


@dataclass
class Context:
    """What every suite gets from the command line."""

    images: list[Path]
    folder: Path
    workdir: Path
    threads: int
    repeats: int = 5
    warmup: int = 2
    device: str = "cpu"
    batches: list[int] = field(default_factory=lambda: [1, 8, 32, 128])
    requests: int = 400
    concurrency: int = 16
    serve_targets: list[str] = field(default_factory=lambda: ["pneumo", "flask-keras"])
    # Another checkout of pneumo-onnx (a commit before a change): `serve` and `pipeline` run
    # its server and its `pneumo batch` too, `rounds` times in alternation with this one's.
    compare: Path | None = None
    rounds: int = 1
    # The `peers` suite: which peers (benchmarks.peer_envs.PEERS) and at which concurrencies.
    peers: list[str] = field(default_factory=lambda: ["fastapi", "pytriton", "bentoml", "litserve"])
    peer_concurrency: list[int] = field(default_factory=lambda: [8, 16])


COMPARED = "before"  # the row name suffix of the compared checkout's rows


def pneumo_argv(checkout: Path | None = None) -> list[str]:
    """`pneumo` as a Python command line, for this checkout or `checkout` (one from before the
    pneumo_onnx namespace runs as `python -m engine.cli`)."""
    old = checkout is not None and not (checkout / "pneumo_onnx").is_dir()
    return [sys.executable, "-m", "engine.cli" if old else "pneumo_onnx.engine.cli"]


def checkout_env(checkout: Path | None) -> tuple[Path | None, dict[str, str] | None]:
    """The working folder and environment that make `pneumo_argv(checkout)` run `checkout`'s
    code (it first on the path), or (None, None) for this one's."""
    import os

    if checkout is None:
        return None, None
    return checkout, {**os.environ, "PYTHONPATH": str(checkout)}


def loadgen_argv(
    port: int, folder: Path, requests: int, concurrency: int, pid: int, *extra: str
) -> list[str]:
    """`benchmarks.loadgen` against a server on `port` (its process `pid`), as a command line."""
    return [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        f"http://127.0.0.1:{port}",
        str(folder),
        f"--requests={requests}",
        f"--concurrency={concurrency}",
        *extra,
        f"--pid={pid}",
    ]


def has(module: str) -> bool:
    """Whether a module can be imported, without importing it (TensorFlow takes seconds)."""
    return importlib.util.find_spec(module) is not None


NO_KERAS = "TensorFlow/Keras not installed: pip install 'pneumo-onnx[convert]'"
