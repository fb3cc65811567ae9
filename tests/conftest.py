"""Fixtures for engine unit tests: tiny ONNX graphs built with onnx.helper, real sample images."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.repository.manifest import MANIFEST_NAME, read_manifest
from pneumo_onnx.engine.repository.sections import FileEntry
from pneumo_onnx.engine.runtime.samples import sample_images
from pneumo_onnx.engine.serve.store.backend import Target
from pneumo_onnx.engine.serve.store.record import PredictionRecord
from tests.postgres_server import PostgresServer, find_bindir


def tiny_model(
    contract: Contract | None = None,
    height: int = 32,
    width: int = 32,
    channels: int = 3,
    batch: int | str = "batch",
) -> onnx.ModelProto:
    """score = sigmoid(4 * (mean(x) - 0.5)): a real image-in, score-out graph in a few nodes."""
    inp = helper.make_tensor_value_info(
        "image", TensorProto.FLOAT, [batch, height, width, channels]
    )
    out = helper.make_tensor_value_info("score", TensorProto.FLOAT, [batch, 1])
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "one"], ["mean2"]),
        helper.make_node("Sub", ["mean2", "half"], ["centred"]),
        helper.make_node("Mul", ["centred", "four"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    inits = [
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("four", TensorProto.FLOAT, [], [4.0]),
    ]
    graph = helper.make_graph(nodes, "tiny", [inp], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if contract is not None:
        helper.set_model_props(model, contract.to_metadata())
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def write_model(tmp_path: Path) -> Callable[..., Path]:
    def write(name: str = "tiny.onnx", **kwargs: object) -> Path:
        path = tmp_path / name
        path.write_bytes(tiny_model(**kwargs).SerializeToString())  # type: ignore[arg-type]
        return path

    return write


@pytest.fixture(scope="session")
def samples() -> list[Path]:
    images = sample_images()
    assert len(images) == 6
    return images


@pytest.fixture
def gradient() -> np.ndarray:
    """A 64x48 horizontal uint8 gradient, easy to reason about after a resize."""
    return np.tile(np.linspace(0, 255, 48).astype(np.uint8), (64, 1))


def unwritable_dir(tmp_path: Path) -> Path:
    """A folder this process cannot create files in, also when running as root."""
    if os.geteuid() == 0:
        return Path("/sys/pneumo-onnx-test-repo")  # sysfs refuses mkdir even to root
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "repo"


def rerecord(version_dir: Path, name: str) -> None:
    """Record the file `name`'s present bytes in its version's manifest: for a test that
    changes a shipped file on purpose and wants it to pass the sha256 check."""
    manifest = read_manifest(version_dir)
    old = manifest.files[name]
    entry = FileEntry.of((version_dir / name).read_bytes(), {"kind": old.kind, **old.figures})
    files = {**manifest.files, name: entry}
    (version_dir / MANIFEST_NAME).write_text(replace(manifest, files=files).to_json())


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (tests/postgres_server.py)."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: `make postgres`")
    server = PostgresServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], Target]:
    """`target(name)`: where a store named `name` lives, for tests that run against both
    databases: a SQLite file in tmp_path, or a fresh PostgreSQL database per name."""
    if request.param == "sqlite":
        return lambda name: tmp_path / name
    server: PostgresServer = request.getfixturevalue("postgres")
    made: dict[str, str] = {}

    def target(name: str) -> Target:
        if name not in made:
            made[name] = server.database()
        return made[name]

    return target


def rec(
    t: float,
    score: float | None = 0.7,
    *,
    threshold: float = 0.5,
    latency: float = 10.0,
    version: str = "1",
    request_id: str = "r",
    error: str | None = None,
    image: bytes | None = None,
) -> PredictionRecord:
    """One row of the prediction log, as the scoring path hands it over."""
    label = None if score is None else ("PNEUMONIA" if score > threshold else "NORMAL")
    return PredictionRecord(
        time=t,
        request_id=request_id,
        route="/predict",
        model_name="pneumonia",
        model_version=version,
        score=score,
        label=label,
        threshold=None if score is None else threshold,
        latency_ms=latency,
        image_sha256="0" * 64,
        image=image,
        error=error,
    )
