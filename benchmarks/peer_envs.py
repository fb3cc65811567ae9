"""The peers of the `peers` suite, each in its own virtualenv: what it installs (pinned), how
it is asked (its route), where it says it is ready. A venv lives under the cache folder
(PNEUMO_BENCH_CACHE, else ~/.cache/pneumo-bench/peers/NAME), made with `python -m venv` and
pip on first use and reused while its pins are unchanged: the frameworks never enter
pneumo-onnx's own dependencies, nor each other's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# The engine's own versions where the framework allows them, so that the runtime is the same.
BASE = ("onnxruntime==1.32.0", "pillow==13.0.0")
NUMPY = "numpy==2.4.6"
INSTALL_TIMEOUT = 1200.0


@dataclass(frozen=True)
class Peer:
    """One framework's server: `module` under benchmarks.peers, run by its venv's python."""

    name: str
    requirements: tuple[str, ...]
    module: str
    route: str  # a key of benchmarks.routes.ROUTES
    health: str  # GET path that answers 200 once the model is loaded
    setup: str  # the configuration, in words, for the report
    ports: int = 1  # consecutive ports it listens on, from --port


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer(
            "fastapi",
            ("fastapi==0.165.0", "uvicorn[standard]==0.55.0", "python-multipart==0.0.34", NUMPY),
            "fastapi_app",
            "seed",
            "/health",
            "uvicorn, 1 process, sync endpoint (thread pool), no batching",
        ),
        Peer(
            "pytriton",
            ("nvidia-pytriton==0.7.0",),  # pins numpy < 2 itself
            "pytriton_app",
            "v2",
            "/v2/models/pneumonia/ready",
            "Triton server, @batch, dynamic batching max 16, queue delay 5 ms, 1 instance",
            ports=3,
        ),
        Peer(
            "bentoml",
            ("bentoml==1.4.40", NUMPY),
            "bentoml_app",
            "list",
            "/readyz",
            "batchable=True, max_batch_size 16, workers=cpu_count, ORT threads cores/workers",
        ),
        Peer(
            "litserve",
            ("litserve==0.2.19", "python-multipart==0.0.34", NUMPY),  # it parses forms with it
            "litserve_app",
            "seed",
            "/health",
            "accelerator=cpu, 1 worker, max_batch_size 16, batch_timeout 5 ms",
        ),
    )
}


class PeerUnavailable(Exception):
    """A peer cannot be installed or started here; the message says why."""


def cache_root() -> Path:
    chosen = os.environ.get("PNEUMO_BENCH_CACHE")
    base = Path(chosen) if chosen else Path.home() / ".cache" / "pneumo-bench"
    return base / "peers"


def pins(peer: Peer) -> str:
    return "\n".join((*peer.requirements, *BASE)) + "\n"


def venv_python(peer: Peer, root: Path | None = None) -> Path:
    """The peer's venv python, made first if missing or made with other pins."""
    folder = (root or cache_root()) / peer.name
    python, stamp = folder / "bin" / "python", folder / "pneumo-pins.txt"
    if python.exists() and stamp.is_file() and stamp.read_text() == pins(peer):
        return python
    folder.parent.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "venv", "--clear", str(folder)], peer, "python -m venv")
    requirements = folder / "requirements.txt"
    requirements.write_text(pins(peer))
    pip = [str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)]
    _run(pip, peer, "pip install")
    stamp.write_text(pins(peer))  # last: a half-made venv is made again next time
    return python


def peer_env(root: Path) -> dict[str, str]:
    """The environment a peer runs in: the harness's, `root` on the path (for
    benchmarks.peers), and this interpreter's libpython first on the loader's path: PyTriton's
    Python backend stub links libpython3.X.so from there, and the system's may be another
    patch release than the standard library it then loads (3.11.2's lacks what 3.11.7's
    multiprocessing calls)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and sysconfig.get_config_var("Py_ENABLE_SHARED"):
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            x for x in (libdir, os.environ.get("LD_LIBRARY_PATH")) if x
        )
    return env


def _run(argv: list[str], peer: Peer, what: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise PeerUnavailable(f"{what} for {peer.name}: no answer in {e.timeout:.0f} s") from e
    if done.returncode != 0:
        lines = [x for x in done.stderr.splitlines() if x.startswith("ERROR")] or [
            *done.stderr.strip().splitlines()[-1:],
            "no output",
        ]
        raise PeerUnavailable(f"{what} for {peer.name} exited {done.returncode}: {lines[0]}")
