"""`pneumo serve --ray`: the same app as Ray Serve replicas on a real local Ray, answering as one
process does (the seed route, V2 through the stock tritonclient, the shared prediction log), and
draining on SIGTERM."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.samples import sample_images
from pneumo_onnx.engine.serve.config import ServeConfig
from tests.postgres_server import PostgresServer
from tests.server_process import ServerProcess

pytest.importorskip("ray.serve", reason="the 'ray' extra is not installed")
from pneumo_onnx.engine.serve.ray_serve import build, deployment_options

UPLOADS = 300
SHARED_FULLRES = Path(__file__).resolve().parents[2] / "shared" / "data" / "fullres"
# Ray prefixes each line a replica logs with its actor and process id.
REPLICA_LINE = re.compile(r"\(ServeReplica:pneumo:PneumoServer pid=(\d+)\).*POST /predict 200")
REPLICA_STATES = """
import json, ray
from ray import serve
ray.init(address="auto", log_to_driver=False)
app = serve.status().applications["pneumo"]
print(json.dumps({"app": str(app.status),
    "replicas": {str(k): v for k, v in app.deployments["PneumoServer"].replica_states.items()}}))
"""


def unique_uploads(n: int) -> list[tuple[Path, bytes]]:
    """`n` different files: the full-resolution X-rays when present, then the samples, each
    repeated with bytes after the JPEG's end (which decoders ignore) so every upload misses the
    result cache and the scores of the same pixels are known."""
    images = sample_images() + (
        sorted(SHARED_FULLRES.rglob("*.jpeg")) if SHARED_FULLRES.is_dir() else []
    )
    return [
        (images[i % len(images)], images[i % len(images)].read_bytes() + b"%08d" % i)
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def database(postgres: PostgresServer) -> str:
    return postgres.database()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[ServerProcess]:
    cwd = tmp_path_factory.mktemp("ray-serve")
    srv = ServerProcess(
        cwd,
        *("--ray", "--replicas", "2", "--decode-workers", "1", "--database", database),
        env={"RAY_DEDUP_LOGS": "0"},  # every replica's lines, each with its pid
    )
    srv.start(timeout=240)
    # Ready answers once a replica is: every replica is up once `serve.run` has returned.
    deadline = time.monotonic() + 120
    while "serving on Ray" not in srv.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.stop(timeout=120)


@pytest.mark.slow
def test_two_replicas_share_postgres_and_drain(
    server: ServerProcess, postgres: PostgresServer, database: str
) -> None:
    engine = Engine.load()
    uploads = unique_uploads(UPLOADS)
    expected = {p: engine.predict(p)["raw_score"] for p in {p for p, _ in uploads}}

    def post(upload: tuple[Path, bytes]) -> tuple[Path, httpx.Response]:
        path, data = upload
        r = httpx.post(f"{server.url}/predict", files={"image": (path.name, data)}, timeout=60)
        return path, r

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, uploads))
    assert [r.status_code for _, r in answers] == [200] * UPLOADS
    for path, r in answers:
        assert r.json()["raw_score"] == pytest.approx(expected[path], abs=1e-6)

    # The same uploads through the stock V2 client, one image per request, 8 at once. Its
    # HTTP client runs on gevent, within one thread: `async_infer` keeps 8 in flight (used
    # from several threads, it fails now and then with "Cannot switch to a different thread").
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}", concurrency=8)

    def sent(upload: tuple[Path, bytes]) -> Any:
        tensor = triton.InferInput("image_bytes", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([upload[1]], dtype=np.object_))
        return client.async_infer("pneumonia", [tensor])

    pending = [sent(u) for u in uploads]
    scores = [float(p.get_result().as_numpy("score").ravel()[0]) for p in pending]
    client.close()
    np.testing.assert_allclose(scores, [expected[p] for p, _ in uploads], atol=1e-6)

    # Both replicas are RUNNING and answered; both write the one log in PostgreSQL.
    states = subprocess.run(
        [sys.executable, "-c", REPLICA_STATES], capture_output=True, text=True, timeout=120
    )
    assert json.loads(states.stdout.splitlines()[-1])["replicas"] == {"RUNNING": 2}, states
    pids = set(REPLICA_LINE.findall(server.log.read_text()))
    assert len(pids) == 2, f"requests reached replicas {pids}"
    time.sleep(0.5)  # each replica's log writer commits within 50 ms
    summary = httpx.get(f"{server.url}/monitoring/summary?hours=1").json()
    assert summary["total"] == 2 * UPLOADS and summary["errors"] == 0, summary
    dbname = database.rsplit("/", 1)[1]
    assert postgres.execute("SELECT count(*) FROM predictions", dbname)[0][0] == 2 * UPLOADS
    # Either replica, scraped through Ray's proxy, adds up both (they share one node).
    for _ in range(4):
        text = httpx.get(f"{server.url}/metrics").text
        assert f'pneumo_requests_total{{route="/predict",status="200"}} {UPLOADS}.0' in text
        v2 = f'pneumo_requests_total{{route="/v2/models/{{name}}/infer",status="200"}} {UPLOADS}.0'
        assert v2 in text

    assert server.stop(timeout=120) == 0
    log = server.log.read_text()
    assert log.count("server stopped: queued requests scored, prediction log flushed") == 2


def test_replica_settings_and_their_errors() -> None:
    assert ServeConfig(ray=True, replicas=3).replica_range == (3, 3)
    autoscaled = ServeConfig(ray=True, autoscale="0:4", max_batch=16)
    assert autoscaled.replica_range == (0, 4)
    options = deployment_options(autoscaled)["autoscaling_config"]
    assert (options["min_replicas"], options["initial_replicas"], options["max_replicas"]) == (
        0,
        1,
        4,
    )
    assert options["target_ongoing_requests"] == 8
    assert deployment_options(ServeConfig(ray=True, replicas=2))["num_replicas"] == 2
    for bad in ("4", "a:b", "3:1", "0:0", ":2"):
        with pytest.raises(UsageError, match="--autoscale"):
            ServeConfig(ray=True, autoscale=bad)
    with pytest.raises(UsageError, match="--replicas needs --ray"):
        ServeConfig(replicas=2)
    with pytest.raises(UsageError, match="--workers is for one machine"):
        ServeConfig(ray=True, workers=2)


def test_the_builder_for_serve_run_reads_settings_by_name(monkeypatch) -> None:
    monkeypatch.setenv("PNEUMO_MAX_BATCH", "12")
    deployment = build({"replicas": "3", "cache-size": "0"})._bound_deployment
    assert deployment.num_replicas == 3
    config = ServeConfig.from_json(deployment.init_args[0])
    assert (config.max_batch, config.cache_size, config.load_before_serving) == (12, 0, True)
    with pytest.raises(UsageError, match="maxbatch: not a pneumo serve setting"):
        build({"maxbatch": "3"})
    with pytest.raises(UsageError, match="replicas"):
        build({"replicas": "many"})
