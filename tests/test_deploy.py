"""deploy/ and the Dockerfile, without a cluster or Docker: the manifests parse and reference
each other (names, labels, ports, probes on health routes the app serves, one image tagged
with our version), their container commands are `pneumo serve` commands the CLI accepts, the
KServe runtime's command serves V2 from a repository laid out as /mnt/models, the image's
entry point starts `pneumo serve` the SageMaker way, and the Dockerfile COPYs files that exist
and make the wheel."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pneumo_onnx import __version__
from pneumo_onnx.engine.cli import build_parser
from pneumo_onnx.engine.runtime.samples import sample_images
from pneumo_onnx.engine.serve.app import create_app
from pneumo_onnx.engine.serve.config import ServeConfig
from pneumo_onnx.engine.serve.front.security import app_routes, declared_access
from tests.server_process import free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
ENTRYPOINT = DEPLOY / "docker" / "entrypoint.sh"


def manifests() -> dict[str, dict[str, Any]]:
    """Every manifest under deploy/, by kind (one of each)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(DEPLOY.glob("*/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in out, f"two {doc['kind']} manifests"
            out[doc["kind"]] = doc
    return out


M = manifests()
DEPLOYMENT, RUNTIME = M["Deployment"], M["ServingRuntime"]
POD = DEPLOYMENT["spec"]["template"]
CONTAINERS = {
    "Deployment": POD["spec"]["containers"][0],
    "ServingRuntime": RUNTIME["spec"]["containers"][0],
}


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_every_manifest_is_there() -> None:
    assert set(M) == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "ServingRuntime",
        "InferenceService",
    }


def test_kubernetes_manifests_reference_each_other() -> None:
    labels = POD["metadata"]["labels"]
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = M["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in CONTAINERS["Deployment"]["ports"]}
    assert all(p["targetPort"] in ports for p in service["ports"])
    target = M["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", DEPLOYMENT["metadata"]["name"])
    # CPU utilisation is a share of what the pod requests: without a request it means nothing.
    assert CONTAINERS["Deployment"]["resources"]["requests"]["cpu"]
    assert POD["spec"]["securityContext"]["runAsNonRoot"] is True


def test_kserve_manifests_reference_each_other() -> None:
    model = M["InferenceService"]["spec"]["predictor"]["model"]
    assert model["runtime"] == RUNTIME["metadata"]["name"]
    formats = {f["name"] for f in RUNTIME["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in RUNTIME["spec"]["protocolVersions"] == ["v2"]
    # KServe serves /v2/models/<InferenceService name>: the model's folder in the repository.
    assert (ROOT / "models" / M["InferenceService"]["metadata"]["name"] / "config.pbtxt").is_file()
    args = CONTAINERS["ServingRuntime"]["args"]
    assert option(args, "--model-repo") == "/mnt/models" and option(args, "--model") == "{{.Name}}"


@pytest.mark.parametrize("kind", sorted(CONTAINERS))
def test_containers_run_our_image_on_their_declared_port(kind: str) -> None:
    container = CONTAINERS[kind]
    image = container["image"]
    assert image.rsplit(":", 1)[1] == __version__, f"{kind}: {image} is not version {__version__}"
    assert image == CONTAINERS["Deployment"]["image"]
    assert container["command"] == ["pneumo", "serve"]
    args = build_parser().parse_args(["serve", *container["args"]])  # flags the CLI has
    assert args.host == "0.0.0.0" and not getattr(args, "protect_health", False)
    assert [p["containerPort"] for p in container["ports"]] == [args.port]


@pytest.mark.parametrize("kind", sorted(CONTAINERS))
def test_probes_are_health_routes_of_the_app(kind: str, tmp_path: Path) -> None:
    app = create_app(ServeConfig(state_dir=tmp_path))
    try:
        health = {
            r.path
            for r in app_routes(app.routes)
            if "GET" in getattr(r, "methods", ()) and declared_access(r) == ["health"]
        }
    finally:
        assert app.state.server.prediction_log.close_within(5) == 0
    container = CONTAINERS[kind]
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in health, f"{kind} {probe}: {get['path']} is no health route"
        assert ports.get(get["port"], get["port"]) in ports.values()
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


@pytest.fixture
def kserve_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    """The ServingRuntime's command, run as it runs in the pod: the repository copied where
    the storage initializer puts it, {{.Name}} the InferenceService's name."""
    mnt = tmp_path / "mnt" / "models"
    shutil.copytree(ROOT / "models" / "pneumonia", mnt / "pneumonia")
    port = free_port()
    substitutes = {
        "/mnt/models": str(mnt),
        "{{.Name}}": M["InferenceService"]["metadata"]["name"],
        "8080": str(port),
        "/tmp/pneumo-state": str(tmp_path / "state"),
    }
    container = CONTAINERS["ServingRuntime"]
    args = [substitutes.get(a, a) for a in container["args"]]
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pneumo_onnx.engine.cli", "serve", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith(("AIP_", "SAGEMAKER"))},
        )
    yield f"http://127.0.0.1:{port}", proc, log
    stop(proc)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def wait_for(url: str, proc: subprocess.Popen[str], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready in {timeout} s:\n{log.read_text()[-3000:]}")


def test_kserve_runtime_command_serves_v2(
    kserve_server: tuple[str, subprocess.Popen[str], Path],
) -> None:
    url, proc, log = kserve_server
    probe = CONTAINERS["ServingRuntime"]["readinessProbe"]["httpGet"]["path"]
    wait_for(url + probe, proc, log)
    name = M["InferenceService"]["metadata"]["name"]
    assert httpx.get(f"{url}/v2/models/{name}/ready").status_code == 200
    image = sample_images()[3]
    data = image.read_bytes()
    tensor = {
        "name": "image_bytes",
        "shape": [1],
        "datatype": "BYTES",
        "data": [base64.b64encode(data).decode()],
    }
    r = httpx.post(f"{url}/v2/models/{name}/infer", json={"inputs": [tensor]}, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == name and out["outputs"][0]["name"] == "score"
    want = httpx.post(f"{url}/predict", files={"image": (image.name, data)}).json()["raw_score"]
    assert out["outputs"][0]["data"] == [pytest.approx(want, abs=1e-6)]


# --- the image's entry point ---------------------------------------------------------------


def entrypoint(
    tmp_path: Path, *args: str, env: dict[str, str], shim: str
) -> tuple[list[str], dict[str, str]]:
    """Run the entry point script with `pneumo` on PATH being `shim` (a shell script body)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "pneumo").write_text("#!/bin/sh\n" + shim)
    (bin_dir / "pneumo").chmod(0o755)
    drop = ("AIP_", "SAGEMAKER", "PNEUMO_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    full = {**base, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path), **env}
    return ["sh", str(ENTRYPOINT), *args], full


@pytest.mark.parametrize(
    "args, env, port",
    [
        (["serve"], {}, "8080"),
        ([], {}, "8080"),
        (["serve"], {"SAGEMAKER_BIND_TO_PORT": "9000"}, ""),
        (["serve"], {"AIP_HTTP_PORT": "9001"}, ""),
        (["serve"], {"PNEUMO_PORT": "9002"}, "9002"),
        (["serve", "--model", "pneumonia"], {}, "8080"),
    ],
    ids=["sagemaker", "no-args", "sagemaker-port", "vertex-port", "pneumo-port", "options"],
)
def test_entrypoint_arguments(
    tmp_path: Path, args: list[str], env: dict[str, str], port: str
) -> None:
    """Its defaults are PNEUMO_ variables (port: only where no platform names one), so the
    container's own PNEUMO_ variables and the options after `serve` keep their precedence."""
    shim = 'printf "%s\\n" "$@" "$PNEUMO_HOST" "${PNEUMO_PORT:-}" "$PNEUMO_STATE_DIR"\n'
    cmd, full = entrypoint(tmp_path, *args, env=env, shim=shim)
    out = subprocess.run(cmd, env=full, capture_output=True, text=True, check=True).stdout
    state = str(tmp_path / "pneumo-state")
    assert out.splitlines() == ["serve", *args[1:], "0.0.0.0", port, state]


def test_entrypoint_keeps_the_containers_settings(tmp_path: Path) -> None:
    env = {"PNEUMO_HOST": "10.0.0.5", "PNEUMO_STATE_DIR": "/data"}
    shim = 'printf "%s\\n" "$@" "$PNEUMO_HOST" "$PNEUMO_STATE_DIR"\n'
    cmd, full = entrypoint(tmp_path, "serve", env=env, shim=shim)
    out = subprocess.run(cmd, env=full, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["serve", "10.0.0.5", "/data"]


def test_entrypoint_runs_other_commands_as_they_are(tmp_path: Path) -> None:
    cmd, env = entrypoint(tmp_path, "info", "--json", env={}, shim='echo "$@"\n')
    assert subprocess.run(cmd, env=env, capture_output=True, text=True).stdout == "info --json\n"


def test_entrypoint_serves_the_sagemaker_way(tmp_path: Path) -> None:
    """`docker run IMAGE serve` with SAGEMAKER_BIND_TO_PORT set, as SageMaker runs it."""
    port = free_port()
    shim = f'exec "{sys.executable}" -m pneumo_onnx.engine.cli "$@"\n'
    cmd, env = entrypoint(tmp_path, "serve", env={"SAGEMAKER_BIND_TO_PORT": str(port)}, shim=shim)
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/ping", proc, log)
        image = sample_images()[0]
        headers = {"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "a=b"}
        r = httpx.post(f"{url}/invocations", content=image.read_bytes(), headers=headers)
        assert r.status_code == 200 and r.json()["prediction"] in ("NORMAL", "PNEUMONIA")
        assert (tmp_path / "pneumo-state" / "predictions.db").is_file()
    finally:
        stop(proc)


# --- the Dockerfile --------------------------------------------------------------------------


def dockerfile() -> list[list[str]]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [line.split() for line in lines if line and not line.startswith("#")]


def copied() -> list[tuple[str, str]]:
    """(source, destination) of each COPY from the build context."""
    out = []
    for words in dockerfile():
        if words[0] == "COPY" and not any(w.startswith("--from") for w in words):
            *sources, dest = words[1:]
            out += [(s, dest) for s in sources]
    return out


def test_dockerfile_copies_files_that_exist_and_runs_serve_the_sagemaker_way() -> None:
    sources = [s for s, _ in copied()]
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not [s for s in sources if s in ignored], "COPY of a path .dockerignore leaves out"
    # Every package the wheel lists must come from a copied folder.
    packages = _pyproject()["tool"]["setuptools"]["packages"]
    tops = {Path(s).parts[0] for s in sources}
    for package in packages:
        folder = ROOT / package.replace(".", "/")
        assert folder.resolve().relative_to(ROOT).parts[0] in tops, package
    instructions = {words[0]: words for words in dockerfile()}
    assert sum(w[0] == "FROM" for w in dockerfile()) == 2  # builder and runtime
    assert instructions["USER"][1] not in ("root", "0")
    entry = json.loads(" ".join(instructions["ENTRYPOINT"][1:]))
    assert json.loads(" ".join(instructions["CMD"][1:])) == ["serve"]
    assert (f"deploy/docker/{ENTRYPOINT.name}", f"/usr/local/bin/{entry[0]}") in copied()


def _pyproject() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.slow
def test_dockerfile_builder_stage_makes_the_wheel(tmp_path: Path) -> None:
    """The builder stage's `pip wheel` on exactly the files it COPYs (Docker itself cannot
    run here): the wheel holds the server and the shipped model."""
    context = tmp_path / "src"
    context.mkdir()
    for source, _ in copied():
        if source.startswith("deploy/"):
            continue  # the runtime stage's
        src = ROOT / source
        if src.is_dir():
            shutil.copytree(src, context / source, symlinks=True, ignore=_ignored)
        else:
            shutil.copy2(src, context / source)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q"]  # as in the Dockerfile
    build = subprocess.run([*pip, "--wheel-dir", str(wheels), str(context)], capture_output=True)
    assert build.returncode == 0, build.stderr.decode(errors="replace")[-3000:]
    (wheel,) = wheels.glob("pneumo_onnx-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "pneumo_onnx/engine/serve/front/routes/cloud.py" in names
    assert "pneumo_onnx/models/pneumonia/2/model.onnx" in names


def _ignored(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n in ("__pycache__", ".pytest_cache") or n.endswith(".egg-info")]
