"""The warm-up gate against versions that load and run but are wrong (an inverted graph, a
constant one), and a version that gives NaN for some inputs: never served as a label, never
answered as `null`. The versions are the shipped model with a few ONNX nodes after its score."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pneumo_onnx.engine.repository.resolve import default_model_dir
from pneumo_onnx.engine.runtime.samples import sample_images
from tests.conftest import rerecord
from tests.server_process import ServerProcess

ADMIN = "admin-0123456789abcdef"
Rewire = Callable[[str], tuple[list[onnx.NodeProto], list[onnx.TensorProto]]]


def derived_version(repo: Path, version: int, rewire: Rewire) -> None:
    """A copy of the shipped version 1 whose `score` output is `rewire`d: the original score
    is renamed `raw_score`, and the nodes returned compute `score` from it (and `image`)."""
    target = repo / "pneumonia" / str(version)
    shutil.copytree(default_model_dir() / "1", target)
    path = target / "model.onnx"
    model = onnx.load(path)
    for node in model.graph.node:
        node.output[:] = ["raw_score" if o == "score" else o for o in node.output]
    nodes, constants = rewire("raw_score")
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(constants)
    onnx.save(model, path)
    rerecord(target, "model.onnx")


def nan_on_flat_gray(score: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """score + 0 * log|mean(image) - 0.25|: the model's score, except NaN where the mean of
    the input is exactly 0.25 (0 * -inf)."""
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "axis1"], ["mean2"]),
        helper.make_node("Sub", ["mean2", "quarter"], ["off"]),
        helper.make_node("Abs", ["off"], ["distance"]),
        helper.make_node("Log", ["distance"], ["log"]),
        helper.make_node("Mul", ["log", "zero"], ["poison"]),
        helper.make_node("Add", [score, "poison"], ["score"]),
    ]
    constants = [
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("quarter", TensorProto.FLOAT, [], [0.25]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
    ]
    return nodes, constants


def inverted(score: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    return [helper.make_node("Sub", ["one", score], ["score"])], [
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    ]


def constant(score: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    nodes = [
        helper.make_node("Mul", [score, "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "half"], ["score"]),
    ]
    return nodes, [
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Versions 1 (shipped), 2 (NaN on flat gray), 3 (inverted), 4 (constant 0.5)."""
    root = tmp_path_factory.mktemp("models")
    repo = root / "repo"
    shutil.copytree(default_model_dir() / "1", repo / "pneumonia" / "1")
    derived_version(repo, 2, nan_on_flat_gray)
    derived_version(repo, 3, inverted)
    derived_version(repo, 4, constant)
    srv = ServerProcess(
        root, "--model-repo", "repo", "--state-dir", "state", env={"PNEUMO_ADMIN_KEYS": ADMIN}
    ).start()
    yield srv
    assert srv.stop() == 0


def test_wrong_versions_are_never_served(server: ServerProcess) -> None:
    """At start-up the newest version that passes is served (2); 3 and 4 are refused with
    the reason, at start-up and when loaded by hand."""
    health = httpx.get(f"{server.url}/health", headers={"X-API-Key": ADMIN}).json()
    assert health["version"] == "2"
    log = server.log_text()
    constant_reason = (
        "pneumonia/4 refused: its scores on the 6 labelled samples span only 0.0000 (a "
        "constant output, under 0.05)"
    )
    inverted_reason = (
        "pneumonia/3 refused: it ranks the labelled samples worse than chance (AUC 0.00, "
        "under 0.5): an inverted or wrong model"
    )
    assert constant_reason in log and inverted_reason in log
    admin = f"{server.url}/v2/repository/models/pneumonia/load"
    for version, reason in (("3", inverted_reason), ("4", constant_reason)):
        r = httpx.post(
            admin,
            json={"parameters": {"version": version}},
            headers={"X-API-Key": ADMIN},
            timeout=60,
        )
        assert r.status_code == 409 and r.json()["error"] == reason
    assert httpx.get(f"{server.url}/health", headers={"X-API-Key": ADMIN}).json()["version"] == "2"


def test_a_nan_score_is_an_error_with_the_request_id(server: ServerProcess) -> None:
    gray = {"inputs": [{"name": "image", "shape": [1, 128, 128, 3], "datatype": "FP32",
                        "data": [0.25] * 49152}]}  # fmt: skip
    r = httpx.post(
        f"{server.url}/v2/models/pneumonia/infer",
        json=gray,
        headers={"X-Request-ID": "nan-1", "X-API-Key": ADMIN},
        timeout=30,
    )
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "nan-1"
    assert r.json() == {
        "error": "the model gave nan for this image, not a probability: no result (the model "
        "version is faulty; see the log)"
    }
    assert "null" not in r.text
    other = np.full(49152, 0.3).tolist()
    gray["inputs"][0]["data"] = other
    r = httpx.post(
        f"{server.url}/v2/models/pneumonia/infer",
        json=gray,
        headers={"X-API-Key": ADMIN},
        timeout=30,
    )
    assert r.status_code == 200 and 0.0 <= r.json()["outputs"][0]["data"][0] <= 1.0
    sample = sample_images()[0]
    r = httpx.post(
        f"{server.url}/predict",
        files={"image": (sample.name, sample.read_bytes())},
        headers={"X-API-Key": ADMIN},
    )
    assert r.status_code == 200 and r.json()["prediction"] == "NORMAL"
    assert "model pneumonia/2 gave a score of nan" in server.log_text()
