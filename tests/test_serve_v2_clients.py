"""The V2 routes as real clients speak them: the stock `tritonclient[http]` with its default
settings (binary tensor data extension, no Content-Type, binary outputs), its JSON mode, its
options (compression both ways, classification, explicit versions), its asyncio client, and
plain HTTP as curl and a KServe V2 spec client send it; every score checked against
`/predict`."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from pneumo_onnx import Engine
from pneumo_onnx.engine.runtime.samples import sample_images
from tests.server_process import ServerProcess

IMAGES = sample_images()[2:5]  # a NORMAL and two PNEUMONIA X-rays
HEAD = json.dumps(
    {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}]}
).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("v2"), "--state-dir", "state").start()
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def expected(server: ServerProcess) -> np.ndarray:
    """What /predict says of IMAGES: the V2 routes must agree."""
    scores = []
    for p in IMAGES:
        r = httpx.post(f"{server.url}/predict", files={"image": (p.name, p.read_bytes())})
        assert r.status_code == 200, r.text
        scores.append(r.json()["raw_score"])
    return np.asarray(scores, dtype=np.float32)


@pytest.fixture(scope="module")
def tensors() -> np.ndarray:
    engine = Engine.load()
    return np.stack([engine.preprocess(p) for p in IMAGES])


def test_server_and_model_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("pneumonia") and client.is_model_ready("pneumonia", "2")
    assert not client.is_model_ready("pneumonia", "7")
    server = client.get_server_metadata()
    assert server["name"] == "pneumo-onnx" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("pneumonia")
    assert meta["inputs"][0] == {"name": "image", "datatype": "FP32", "shape": [-1, 128, 128, 3]}
    assert meta["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}]
    config = client.get_model_config("pneumonia")
    assert config["max_batch_size"] == 32 and config["input"][0]["dims"] == [128, 128, 3]
    assert config["output"] == [{"name": "score", "data_type": "TYPE_FP32", "dims": [1]}]
    assert client.get_model_config("pneumonia", "2")["name"] == "pneumonia"
    assert {"name": "pneumonia", "version": "2", "state": "READY"} in (
        client.get_model_repository_index()
    )
    with pytest.raises(InferenceServerException, match="no model named 'nothing'") as e:
        client.get_model_metadata("nothing")
    assert e.value.status() == "404"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_fp32_with_default_settings_and_json(
    client: triton.InferenceServerClient,
    tensors: np.ndarray,
    expected: np.ndarray,
    binary: bool,
) -> None:
    tensor = triton.InferInput("image", list(tensors.shape), "FP32")
    tensor.set_data_from_numpy(tensors, binary_data=binary)
    default = client.infer("pneumonia", [tensor], request_id="r-1")  # outputs binary by default
    assert default.get_response()["id"] == "r-1"
    np.testing.assert_allclose(default.as_numpy("score").ravel(), expected, atol=1e-5)
    asked = triton.InferRequestedOutput("score", binary_data=binary)
    result = client.infer("pneumonia", [tensor], outputs=[asked], model_version="2")
    assert result.as_numpy("score").shape == (3, 1)
    np.testing.assert_allclose(result.as_numpy("score").ravel(), expected, atol=1e-5)


def test_bytes_raw_images_in_binary_and_base64_in_json(
    client: triton.InferenceServerClient, expected: np.ndarray
) -> None:
    raw = np.array([p.read_bytes() for p in IMAGES], dtype=np.object_)
    tensor = triton.InferInput("image_bytes", [len(IMAGES)], "BYTES")
    tensor.set_data_from_numpy(raw)  # binary: 4-byte length + the JPEG's own bytes
    result = client.infer("pneumonia", [tensor])
    np.testing.assert_allclose(result.as_numpy("score").ravel(), expected, atol=1e-6)

    b64 = np.array([[base64.b64encode(p.read_bytes())] for p in IMAGES], dtype=np.object_)
    tensor = triton.InferInput("image_bytes", [len(IMAGES), 1], "BYTES")
    tensor.set_data_from_numpy(b64, binary_data=False)
    asked = triton.InferRequestedOutput("score", binary_data=False)
    result = client.infer("pneumonia", [tensor], outputs=[asked])
    np.testing.assert_allclose(result.as_numpy("score").ravel(), expected, atol=1e-6)


def test_compressed_request_and_errors_reach_the_client(
    client: triton.InferenceServerClient, tensors: np.ndarray, expected: np.ndarray
) -> None:
    tensor = triton.InferInput("image", list(tensors.shape), "FP32")
    tensor.set_data_from_numpy(tensors)
    result = client.infer("pneumonia", [tensor], request_compression_algorithm="gzip")
    np.testing.assert_allclose(result.as_numpy("score").ravel(), expected, atol=1e-5)
    bad = triton.InferInput("image", [1, 128, 128, 3], "FP32")
    bad.set_data_from_numpy(np.full((1, 128, 128, 3), 200.0, np.float32))
    with pytest.raises(InferenceServerException, match=r"must lie in \[0, 1\]") as e:
        client.infer("pneumonia", [bad])
    assert e.value.status() == "400"
    with pytest.raises(InferenceServerException, match="unknown output 'prob'"):
        client.infer("pneumonia", [tensor], outputs=[triton.InferRequestedOutput("prob")])


def test_plain_json_as_curl_sends_it(server: ServerProcess, expected: np.ndarray) -> None:
    """No Content-Type, flat data, the KServe spec's JSON only."""
    blobs = [base64.b64encode(p.read_bytes()).decode() for p in IMAGES]
    body = {"inputs": [{"name": "image_bytes", "shape": [3], "datatype": "BYTES", "data": blobs}]}
    url = f"{server.url}/v2/models/pneumonia/infer"
    r = httpx.post(url, content=json.dumps(body).encode(), headers={"content-type": ""})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    out = r.json()
    assert out["model_name"] == "pneumonia" and out["model_version"] == "2"
    assert out["outputs"][0]["shape"] == [3, 1] and out["outputs"][0]["datatype"] == "FP32"
    np.testing.assert_allclose(out["outputs"][0]["data"], expected, atol=1e-6)
    r = httpx.post(
        url,
        content=gzip.compress(json.dumps(body).encode()),
        headers={"content-encoding": "gzip"},
    )
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == out["outputs"][0]["data"]


@pytest.mark.parametrize(
    "header, body, message",
    [
        ("5000", b"{}", "must be a byte count within the body"),
        (
            str(len(HEAD)),
            HEAD + b"\x00\x00\x00",
            "the body holds binary data but no input has binary_data_size",
        ),
        (
            None,
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [1, 128, 128, 3],
                            "datatype": "FP32",
                            "parameters": {"shared_memory_region": "r0"},
                        }
                    ]
                }
            ).encode(),
            "'shared_memory_region' is not supported",
        ),
    ],
    ids=["header past the body", "binary without size", "shared memory"],
)
def test_malformed_binary_requests_get_400(
    server: ServerProcess, header: str | None, body: bytes, message: str
) -> None:
    headers = {"Inference-Header-Content-Length": header} if header else {}
    r = httpx.post(f"{server.url}/v2/models/pneumonia/infer", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_compression_both_ways(
    client: triton.InferenceServerClient,
    tensors: np.ndarray,
    expected: np.ndarray,
    algorithm: str,
    binary: bool,
) -> None:
    """A compressed request is inflated; asked for a compressed answer (Accept-Encoding), the
    server answers uncompressed, which the client takes as it is."""
    tensor = triton.InferInput("image", list(tensors.shape), "FP32")
    tensor.set_data_from_numpy(tensors, binary_data=binary)
    result = client.infer(
        "pneumonia",
        [tensor],
        outputs=[triton.InferRequestedOutput("score", binary_data=binary)],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    np.testing.assert_allclose(result.as_numpy("score").ravel(), expected, atol=1e-5)


def test_answers_are_not_compressed(server: ServerProcess) -> None:
    url = f"{server.url}/v2/models/pneumonia/infer"
    body = {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(IMAGES[0].read_bytes()).decode()]}]}  # fmt: skip
    r = httpx.post(url, json=body, headers={"Accept-Encoding": "gzip, deflate"})
    assert r.status_code == 200 and "content-encoding" not in r.headers


def bomb(algorithm: str, size: int) -> bytes:
    data = b"\0" * size
    return gzip.compress(data, 9) if algorithm == "gzip" else zlib.compress(data, 9)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_a_compression_bomb_gets_413_without_inflating(
    server: ServerProcess, algorithm: str
) -> None:
    """200 KB that inflate to 256 MB: refused with the upload limit's 413 once 16 MB came out,
    without the server's memory growing by anything like the 256 MB."""
    body = bomb(algorithm, 256 * 2**20)
    assert len(body) < 300_000
    server.reset_peak_rss()
    before = server.peak_rss_mb()
    started = time.monotonic()
    r = httpx.post(
        f"{server.url}/v2/models/pneumonia/infer",
        content=body,
        headers={"Content-Encoding": algorithm},
        timeout=20,
    )
    assert r.status_code == 413, r.text
    assert r.json() == {
        "error": f"request too large: the {algorithm} body inflates past the limit of 16 MB"
    }
    assert time.monotonic() - started < 5
    assert server.peak_rss_mb() - before < 100


@pytest.mark.parametrize(
    "body, message",
    [
        (gzip.compress(b'{"inputs": []}')[:-6], "ends before its compressed stream does"),
        (gzip.compress(b"{}") * 2, "holds data after its compressed stream"),
        (b"{}", "cannot be inflated"),
    ],
    ids=["truncated", "two members", "not gzip"],
)
def test_broken_gzip_bodies_get_400(server: ServerProcess, body: bytes, message: str) -> None:
    r = httpx.post(
        f"{server.url}/v2/models/pneumonia/infer",
        content=body,
        headers={"Content-Encoding": "gzip"},
    )
    assert r.status_code == 400 and message in r.json()["error"], r.text


@pytest.mark.parametrize("class_count", [1, 2, 3])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension(
    client: triton.InferenceServerClient,
    tensors: np.ndarray,
    expected: np.ndarray,
    class_count: int,
    binary: bool,
) -> None:
    """class_count=k: Triton's "probability:index:label" strings of the two classes (k
    clamped to 2), the label the model decides first, each with its own probability: a
    NORMAL X-ray is never reported as PNEUMONIA with P(PNEUMONIA)."""
    tensor = triton.InferInput("image", list(tensors.shape), "FP32")
    tensor.set_data_from_numpy(tensors)
    asked = triton.InferRequestedOutput("score", binary_data=binary, class_count=class_count)
    result = client.infer("pneumonia", [tensor], outputs=[asked])
    classes = result.as_numpy("score")
    assert classes.shape == (3, min(class_count, 2))
    got = [[c.decode() if binary else c for c in row] for row in classes]
    threshold = client.get_model_metadata("pneumonia")["parameters"]["threshold"]
    assert got == [expected_classes(s, threshold, class_count) for s in expected]
    assert got[0][0] == f"{1 - expected[0]:f}:0:NORMAL"  # IMAGES[0] is a NORMAL X-ray


def expected_classes(p: float, threshold: float, class_count: int) -> list[str]:
    """What the classification extension answers for P(PNEUMONIA) `p`."""
    normal, pneumonia = f"{1 - p:f}:0:NORMAL", f"{p:f}:1:PNEUMONIA"
    ranked = [pneumonia, normal] if p > threshold else [normal, pneumonia]
    return ranked[:class_count]


def test_classification_count_must_be_a_count(server: ServerProcess) -> None:
    body = {"inputs": json.loads(HEAD)["inputs"],
            "outputs": [{"name": "score", "parameters": {"classification": "two"}}]}  # fmt: skip
    r = httpx.post(f"{server.url}/v2/models/pneumonia/infer", json=body)
    assert r.status_code == 400
    assert r.json()["error"] == (
        "output parameter 'classification' must be a class count >= 0, got 'two'"
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c: c.get_inference_statistics(), "inference statistics are not served"),
        (lambda c: c.get_inference_statistics("pneumonia"), "inference statistics are not"),
        (lambda c: c.get_inference_statistics("pneumonia", "2"), "inference statistics are"),
        (lambda c: c.get_system_shared_memory_status(), "shared memory is not supported"),
        (lambda c: c.get_cuda_shared_memory_status(), "shared memory is not supported"),
        (lambda c: c.get_trace_settings(), "trace and log settings are not served"),
        (lambda c: c.get_log_settings(), "trace and log settings are not served"),
    ],
    ids=["stats", "model stats", "version stats", "shm", "cuda shm", "trace", "log"],
)
def test_extensions_not_served_are_a_clean_501(
    client: triton.InferenceServerClient,
    call: Callable[[triton.InferenceServerClient], Any],
    message: str,
) -> None:
    with pytest.raises(InferenceServerException, match=message) as e:
        call(client)
    assert e.value.status() == "501"
    assert client.is_server_ready()


def test_asyncio_client(server: ServerProcess, tensors: np.ndarray, expected: np.ndarray) -> None:
    async def session() -> None:
        client = triton_aio.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready("pneumonia", "2")
            assert (await client.get_model_config("pneumonia"))["name"] == "pneumonia"
            tensor = triton_aio.InferInput("image", list(tensors.shape), "FP32")
            tensor.set_data_from_numpy(tensors)
            result = await client.infer(
                "pneumonia",
                [tensor],
                model_version="2",
                request_compression_algorithm="gzip",
                response_compression_algorithm="gzip",
            )
            np.testing.assert_allclose(result.as_numpy("score").ravel(), expected, atol=1e-5)
            with pytest.raises(InferenceServerException, match="version 7 is not loaded"):
                await client.infer("pneumonia", [tensor], model_version="7")
            with pytest.raises(InferenceServerException, match="statistics") as e:
                await client.get_inference_statistics("pneumonia")
            assert e.value.status() == "501"
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(session(), 20))


# --- a client written from the KServe V2 REST spec alone ---------------------------------------


def test_spec_parameters_id_and_outputs(server: ServerProcess, expected: np.ndarray) -> None:
    """`parameters` at request and input level are accepted, `id` is echoed, and the answer is
    the same whether `outputs` is omitted, empty, or lists `score`."""
    url = f"{server.url}/v2/models/pneumonia/versions/2/infer"
    tensor = {"name": "image_bytes", "shape": [3], "datatype": "BYTES",
              "data": [base64.b64encode(p.read_bytes()).decode() for p in IMAGES],
              "parameters": {"content_type": "base64"}}  # fmt: skip
    for outputs in (None, [], [{"name": "score"}], [{"name": "score", "parameters": {}}]):
        body: dict[str, Any] = {"id": "spec-1", "parameters": {"priority": 1}, "inputs": [tensor]}
        if outputs is not None:
            body["outputs"] = outputs
        r = httpx.post(url, json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["id"] == "spec-1" and out["model_name"] == "pneumonia"
        assert [o["name"] for o in out["outputs"]] == ["score"]
        np.testing.assert_allclose(out["outputs"][0]["data"], expected, atol=1e-6)
    del body["id"]
    assert "id" not in httpx.post(url, json=body).json()


FP32 = {"name": "image", "shape": [1, 128, 128, 3], "datatype": "FP32", "data": [0.5] * 49152}


@pytest.mark.parametrize(
    "body, message",
    [
        ({"inputs": [{**FP32, "shape": [1, 128, 128]}]}, "FP32 input must have shape [N, H, W, C]"),
        ({"inputs": [{**FP32, "shape": [2, 128, 128, 3]}]}, "needs 98304 values, got 49152"),
        ({"inputs": [{**FP32, "datatype": "INT32"}]}, "input datatype must be FP32 or BYTES"),
        ({"inputs": [{k: v for k, v in FP32.items() if k != "datatype"}]},
         "inputs.0.datatype: Field required"),
        ({"inputs": [{**FP32, "shape": ["a"]}]}, "inputs.0.shape.0: Input should be a valid"),
        ({"inputs": []}, "inputs: List should have at least 1 item"),
        ({"id": 5, "inputs": [FP32]}, "id: Input should be a valid string"),
        (["not", "an", "object"], "request: Input should be a valid dictionary"),
    ],
    ids=["rank", "count", "datatype", "no datatype", "shape type", "no inputs", "id type", "list"],
)  # fmt: skip
def test_spec_errors_are_json_400(server: ServerProcess, body: Any, message: str) -> None:
    r = httpx.post(f"{server.url}/v2/models/pneumonia/infer", json=body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/json"
    assert list(r.json()) == ["error"] and message in r.json()["error"]
