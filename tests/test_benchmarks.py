"""The benchmark harness (`python -m benchmarks`): option errors, the FLOP count and peak
arithmetic, and a small real run of each CPU suite whose outputs must be well formed. The
smoke runs check that the harness works, not how fast anything is."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks import flops
from benchmarks.__main__ import main
from benchmarks.routes import ROUTES, build_seed, build_v2
from benchmarks.suites import has
from benchmarks.suites.peers import best_peer_ratios, compare_answers, peer_args_problem
from benchmarks.timing import ratio
from pneumo_onnx.engine.offline.timing import summary_ms

KERAS = has("keras") and has("tensorflow")


def conv_model(path: Path) -> None:
    """x (N,3,16,16) -> Conv 8x3x3x3 pad 1 -> Flatten -> MatMul (2048x1) -> score."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])
    w = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    m = numpy_helper.from_array(np.ones((8 * 16 * 16, 1), np.float32), "m")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("MatMul", ["f", "m"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "conv", [x], [y], [w, m])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


def test_model_flops_counts_conv_and_matmul_macs(tmp_path: Path) -> None:
    conv_model(tmp_path / "m.onnx")
    counted = flops.model_flops(tmp_path / "m.onnx", batch=4)
    conv_macs = 8 * 16 * 16 * 3 * 3 * 3  # outputs x (C_in x kH x kW)
    matmul_macs = 2048
    assert counted["macs_by_op"] == {"Conv": conv_macs, "MatMul": matmul_macs}
    assert counted["flops_per_image"] == 2 * (conv_macs + matmul_macs)


def test_shipped_model_is_about_half_a_gflop() -> None:
    counted = flops.model_flops(Path("models/pneumonia/1/model.onnx"))
    assert 0.3 < counted["gflops_per_image"] < 0.7, counted


@pytest.mark.parametrize(
    ("cpu", "per_cycle"),
    [
        ({"vendor": "AuthenticAMD", "family": 25, "flags": ["fma", "avx2", "avx512f"]}, 32),
        ({"vendor": "AuthenticAMD", "family": 26, "flags": ["fma", "avx2", "avx512f"]}, 64),
        ({"vendor": "GenuineIntel", "family": 6, "flags": ["fma", "avx2", "avx512f"]}, 64),
        ({"vendor": "AuthenticAMD", "family": 23, "flags": ["fma", "avx2"]}, 32),
        ({"vendor": "", "flags": []}, 8),
    ],
    ids=["zen4", "zen5", "intel-avx512", "avx2", "none"],
)
def test_theoretical_peak_from_cpu_facts(cpu: dict[str, Any], per_cycle: int) -> None:
    peak = flops.theoretical_peak({**cpu, "physical_cores": 2, "mhz": 2500.0}, threads=8)
    assert peak["flop_per_cycle_per_core"] == per_cycle
    assert peak["cores"] == 2  # threads beyond the physical cores add no FMA units
    assert peak["gflops"] == pytest.approx(2 * per_cycle * 2.5)
    assert peak["assumption"]


def test_summaries() -> None:
    s = summary_ms([0.001, 0.002, 0.003, 0.004])
    assert s["n"] == 4 and s["min"] == 1.0 and s["max"] == 4.0 and s["p50"] == 2.5
    assert ratio(10.0, 4.0) == 2.5 and ratio(10.0, None) is None and ratio(None, 1.0) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--suite", "model,nope"], "--suite: unknown ['nope']"),
        (["--batch-sizes", "1,0"], "--batch-sizes: expected integers >= 1"),
        (["--batch-sizes", "one"], "--batch-sizes: expected comma-separated integers"),
        (["--serve-targets", "gunicorn"], "--serve-targets: unknown ['gunicorn']"),
        (["--concurrency", "0"], "--concurrency must be at least 1"),
        (["--peers", "torchserve"], "--peers: unknown ['torchserve']"),
        (["--peer-concurrency", "8,0"], "--peer-concurrency: expected integers >= 1"),
        (["--images", "/nonexistent/xrays"], "--images: /nonexistent/xrays is not a folder"),
    ],
    ids=[
        "suite",
        "batch-zero",
        "batch-text",
        "target",
        "concurrency",
        "peer",
        "peer-concurrency",
        "images",
    ],
)
def test_bad_options_are_usage_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err


def test_a_folder_without_images_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("no x-rays here")
    assert main(["--images", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "--images: no images" in capsys.readouterr().err


def smoke(tmp_path: Path, suite: str, *extra: str) -> dict[str, Any]:
    """One tiny real run: 3 shipped samples, 1 repeat. Returns the suite's result, after
    checking the three outputs are there and consistent."""
    out = tmp_path / "out"
    argv = ["--suite", suite, "--images", "engine/samples", "--max-images", "3", "--repeats", "1"]
    assert main([*argv, "--warmup", "1", "--out", str(out), "--label", "smoke", *extra]) == 0
    (json_path,) = out.glob("bench-smoke-*.json")
    run = json.loads(json_path.read_text())
    assert run["schema"] == "pneumo-bench/1" and run["images"]["count"] == 3
    assert run["machine"]["cpu"]["logical_cpus"] >= 1
    assert run["versions"]["onnxruntime"] and len(run["model"]["sha256"]["model.onnx"]) == 64
    md = json_path.with_suffix(".md").read_text()
    assert f"### {suite}" in md and "| row |" in md
    png = json_path.with_suffix(".png")
    if has("matplotlib"):
        assert run["chart"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png.read_bytes()[16:24])
        assert width >= 600 and height >= 300
    else:
        assert run["chart"].startswith("skipped: matplotlib not installed")
    result = run["suites"][suite]
    assert result["status"] == "ok", result
    for skipped in result["skipped"]:
        assert skipped["reason"], skipped
    return result


def names(result: dict[str, Any]) -> set[str]:
    return {r["name"] for r in result["rows"]}


@pytest.mark.slow
def test_model_suite_smoke(tmp_path: Path) -> None:
    result = smoke(tmp_path, "model", "--batch-sizes", "1,2")
    rows = {(r["name"], r["batch"]): r for r in result["rows"]}
    for variant in ("fp32", "int8", "int8-full"):
        for batch in (1, 2):
            row = rows[(f"ort-{variant}", batch)]
            assert row["images_per_second"] > 0 and row["latency_ms"]["n"] >= 1
    assert rows[("ort-fp32-v1", 2)]["images_per_second"] > 0  # the model v2 replaced
    assert result["default_over_v1_fp32"]["batch"] == 2
    assert result["default_over_v1_fp32"]["ratio"] > 0
    if KERAS:
        assert {"keras-predict", "keras-call", "tflite-fp32", "tflite-dynamic"} <= names(result)
        assert rows[("keras-predict", 1)]["ratio_to_baseline"] == 1.0
        assert rows[("ort-fp32", 2)]["ratio_to_baseline"] > 0
    else:
        assert {s["name"] for s in result["skipped"]} >= {"keras-predict", "tflite-fp32"}
    assert result["peak"]["model"]["flops_per_image"] > 0
    assert result["peak"]["measured_peak"]["gflops"] > 0
    assert "batch 32 not among" in result["peak"]["achieved"]


@pytest.mark.slow
def test_pipeline_suite_smoke(tmp_path: Path) -> None:
    result = smoke(tmp_path, "pipeline")
    rows = {r["name"]: r for r in result["rows"]}
    for name in ("engine-fast", "engine-reference"):
        assert rows[name]["images"] == 3 and rows[name]["images_per_second"] > 0
        assert rows[name]["latency_ms"]["n"] == 3  # one warm pass, one call per image
        assert 0 < rows[name]["startup_seconds"] <= rows[name]["cold_seconds"]
        assert rows[name]["peak_rss_mb"] > 10
    assert rows["pneumo-batch-cli"]["cold_seconds"] > 0
    assert result["fast_vs_reference"]["images"] == 3
    assert result["fast_vs_reference"]["max_score_diff"] < 0.05
    if KERAS:
        assert rows["keras-batch"]["ratio_to_baseline"] == 1.0
        assert rows["engine-fast"]["cold_ratio_to_keras_loop"] > 0


@pytest.mark.slow
def test_startup_suite_smoke(tmp_path: Path) -> None:
    result = smoke(tmp_path, "startup")
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["pneumo-predict"]["seconds_median"] > 0
    size = result["installed_size"]
    assert size["tensorflow_free"]["mb"] > 10
    if KERAS:
        assert rows["keras-script"]["ratio_to_baseline"] == 1.0
        assert size["with_tensorflow"]["mb"] > size["tensorflow_free"]["mb"]


@pytest.mark.slow
def test_serve_suite_smoke(tmp_path: Path) -> None:
    """The Flask + Keras baseline under a real load; `pneumo serve` when this engine has it."""
    result = smoke(tmp_path, "serve", "--requests", "6", "--concurrency", "2")
    skipped = {s["name"]: s["reason"] for s in result["skipped"]}
    for row in result["rows"]:
        assert row["errors"] == 0, row["error_examples"]
        assert row["requests_per_second"] > 0 and row["latency_ms"]["n"] == 6
        assert row["server_peak_rss_mb"] > 10
    if "pneumo" in skipped:
        assert "'serve'" in skipped["pneumo"]
    if KERAS and has("flask"):
        assert "flask-keras" in names(result)


@pytest.mark.slow
def test_a_checkout_compared_in_the_same_run(tmp_path: Path) -> None:
    """`--compare-checkout` (here this very checkout) adds its server and its `pneumo batch`
    beside ours, `--rounds` times in alternation, with the ratio between them."""
    here = str(Path(__file__).resolve().parents[1])
    extra = ("--compare-checkout", here, "--rounds", "2", "--serve-targets", "pneumo")
    result = smoke(tmp_path, "serve", "--requests", "4", "--concurrency", "2", *extra)
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"pneumo", "pneumo@before"} and result["rounds"] == 2
    assert len(rows["pneumo"]["rounds_requests_per_second"]) == 2
    assert rows["pneumo"]["ratio_to_before"] > 0
    assert main(["--compare-checkout", str(tmp_path), "--out", str(tmp_path / "o")]) == 2


JPEG = b"\xff\xd8 pixels \xff\xd9pneumo-loadgen-7"
SEED_ANSWER = {"prediction": "NORMAL", "confidence": 0.9, "raw_score": 0.1, "threshold": 0.71}


def test_seed_request_is_the_seed_apis_multipart_upload() -> None:
    path, body, headers = build_seed("NORMAL/a.jpeg", JPEG)
    boundary = headers["Content-Type"].split("boundary=")[1]
    assert path == "/predict" and headers["Content-Type"].startswith("multipart/form-data")
    assert body.startswith(f"--{boundary}\r\n".encode()) and body.endswith(
        f"--{boundary}--\r\n".encode()
    )
    assert b'name="image"; filename="a.jpeg"' in body and JPEG in body


def test_v2_request_is_a_binary_bytes_tensor_of_one_image() -> None:
    path, body, headers = build_v2("NORMAL/a.jpeg", JPEG)
    n = int(headers["Inference-Header-Content-Length"])
    header, blob = json.loads(body[:n]), body[n:]
    assert path == "/v2/models/pneumonia/infer"
    (tensor,) = header["inputs"]
    assert tensor["name"] == "image_bytes" and tensor["datatype"] == "BYTES"
    assert tensor["shape"] == [1, 1] and tensor["parameters"]["binary_data_size"] == len(blob)
    assert struct.unpack("<I", blob[:4])[0] == len(JPEG) and blob[4:] == JPEG
    assert header["outputs"] == [{"name": "score", "parameters": {"binary_data": False}}]


@pytest.mark.parametrize(
    ("route", "payload", "answer"),
    [
        ("seed", SEED_ANSWER, 0.1),
        ("seed", {"raw_score": 0.1}, "missing fields: ['confidence', 'prediction', 'threshold']"),
        ("seed", {**SEED_ANSWER, "raw_score": "0.1"}, "the score is not a number"),
        ("seed", [SEED_ANSWER], "not a JSON object"),
        ("list", [SEED_ANSWER], 0.1),
        ("list", [SEED_ANSWER, SEED_ANSWER], "expected a list of one answer"),
        ("v2", {"outputs": [{"name": "score", "shape": [1, 1], "data": [0.25]}]}, 0.25),
        ("v2", {"outputs": [{"name": "prob", "data": [0.25]}]}, "expected output 'score'"),
        ("v2", {"error": "overloaded"}, "expected output 'score'"),
    ],
    ids=[
        "seed",
        "seed-missing",
        "seed-text",
        "seed-list",
        "list",
        "list-two",
        "v2",
        "v2-name",
        "v2-error",
    ],
)
def test_each_route_reads_the_score_or_says_what_was_wrong(
    route: str, payload: object, answer: float | str
) -> None:
    got = ROUTES[route].score(json.dumps(payload).encode())
    assert got == answer if isinstance(answer, float) else str(got).startswith(answer), got
    garbage = {"seed": "not a JSON object", "list": "expected a list", "v2": "expected output"}
    assert str(ROUTES[route].score(b"<html>")).startswith(garbage[route])


@pytest.mark.parametrize(
    ("scores", "flagged", "why"),
    [
        ({"a": 0.1, "b": 0.9, "c": 0.705}, False, ""),
        ({"a": 0.1, "b": 0.9, "c": 0.715}, False, ""),  # a flip 0.005 from the threshold
        ({"a": 0.1, "b": 0.95, "c": 0.705}, True, "max |diff| 0.0500 > 0.02"),
        ({"a": 0.1, "b": 0.5, "c": 0.705}, True, "1 labels differ away from the threshold"),
        ({"z": 0.5}, True, "no answers to compare"),
    ],
    ids=["same", "flip-at-threshold", "score-strays", "label-flips", "nothing-in-common"],
)
def test_answers_are_checked_against_the_reference(
    scores: dict[str, float], flagged: bool, why: str
) -> None:
    reference = {"a": 0.1, "b": 0.9, "c": 0.705, "d": 0.3}
    checked = compare_answers(scores, reference, threshold=0.71)
    assert checked["flagged"] is flagged and why in checked["why"], checked
    if scores.keys() <= reference.keys():
        assert checked["images"] == 3
        assert checked["labels_agree"] + checked["labels_differ"] == 3


def row(name: str, c: int, rps: float, p99: float, **extra: Any) -> dict[str, Any]:
    return {"name": name, "concurrency": c, "requests_per_second": rps, "errors": 0,
            "latency_ms": {"p99": p99}, **extra}  # fmt: skip


def test_pneumo_is_compared_with_the_best_sound_peer_at_each_concurrency() -> None:
    rows = [
        row("pneumo-seed", 16, 60.0, 300.0),
        row("pneumo-v2", 16, 45.0, 500.0),
        row("fastapi", 16, 20.0, 900.0),
        row("bentoml", 16, 30.0, 400.0),
        row("litserve", 16, 90.0, 100.0, answers={"flagged": True}),  # wrong answers: not best
        row("pytriton", 16, 99.0, 100.0, errors=3),  # errors: not best
        row("pneumo-seed", 8, 50.0, 200.0),
        row("fastapi", 8, 40.0, 150.0),
    ]
    got = {(r["route"], r["concurrency"]): r for r in best_peer_ratios(rows)}
    assert set(got) == {("seed", 16), ("v2", 16), ("seed", 8)}
    assert got[("seed", 16)]["best_peer"] == "bentoml"
    assert got[("seed", 16)]["requests_per_second_ratio"] == 2.0
    assert got[("seed", 16)]["meets_goal"] is True
    assert got[("v2", 16)]["requests_per_second_ratio"] == 1.5
    assert got[("v2", 16)]["meets_goal"] is False  # 1.5x, but a higher p99
    assert got[("seed", 8)]["best_peer"] == "fastapi" and got[("seed", 8)]["meets_goal"] is False


def test_the_peers_state_the_shipped_models_pipeline() -> None:
    from pneumo_onnx.engine.runtime.engine import Engine

    with Engine.load("models/pneumonia/2") as engine:
        assert peer_args_problem(engine.contract) is None


@pytest.mark.slow
def test_peers_suite_smoke_with_the_fastapi_peer(tmp_path: Path) -> None:
    """`pneumo serve` on both routes and the plain FastAPI peer (its venv made in the cache
    on first use), a few requests each; every answer checked against Engine.predict."""
    extra = ("--peers", "fastapi", "--requests", "4", "--peer-concurrency", "2")
    result = smoke(tmp_path, "peers", *extra)
    rows = {r["name"]: r for r in result["rows"]}
    skipped = {s["name"]: s["reason"] for s in result["skipped"]}
    assert {"pneumo-seed", "pneumo-v2"} <= set(rows)
    assert set(rows) | set(skipped) == {"pneumo-seed", "pneumo-v2", "fastapi"}
    for r in rows.values():
        assert r["errors"] == 0, r["error_examples"]
        assert r["latency_ms"]["n"] == 4 and r["peak_tree_rss_mb"] > 10
        assert r["answers"]["images"] >= 1 and not r["answers"]["flagged"], r["answers"]
    if "fastapi" in rows:
        assert {(r["route"], r["best_peer"]) for r in result["ratios"]} == {
            ("seed", "fastapi"),
            ("v2", "fastapi"),
        }


@pytest.mark.slow
def test_upload_cost_measures_both_ways_against_a_real_server() -> None:
    """`python -m benchmarks.upload_cost` end to end, tiny: both ways answered, CPU counted."""
    import subprocess
    import sys

    from pneumo_onnx.engine.runtime.samples import SAMPLES_DIR

    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.upload_cost", "--images", str(SAMPLES_DIR)),
            *("--requests", "6", "--rounds", "1", "--concurrency", "2"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)["summary"]
    for way in ("multipart", "raw"):
        row = summary["medians"][f"pneumo {way}"]
        assert row["errors"] == 0 and row["requests_per_second"] > 0
        assert row["server_cpu_ms"] > 0 and row["mean_batch"] >= 1
    assert summary["decode_cpu_ms_per_image"] > 0
    assert set(summary["model_cpu_ms_per_image_by_batch"]) == {str(b) for b in range(1, 9)}
