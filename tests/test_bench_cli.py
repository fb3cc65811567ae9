"""`pneumo bench`: the report and its table in process on a tiny model, every usage error, the
ceiling's arithmetic, and one real process on the shipped model. These tests check that the
figures are there and consistent, never how fast anything is."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
from PIL import Image

from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.cli.bench import StepProgress
from pneumo_onnx.engine.contract import Contract, InputSpec
from pneumo_onnx.engine.offline.bench_images import MIN_PASS_BATCHES, pass_images
from pneumo_onnx.engine.offline.ceiling import ceiling
from pneumo_onnx.engine.offline.timing import timed_calls
from pneumo_onnx.engine.repository.manifest import sha256_file

CONTRACT = Contract(input=InputSpec(height=32, width=32))
QUICK = ["--seconds", "0.05", "--batch-sizes", "1,2", "--batch-size", "2"]


@pytest.fixture
def model(write_model) -> str:
    return str(write_model(contract=CONTRACT))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "xrays"
    root.mkdir()
    for i, value in enumerate((20, 90, 160, 230)):
        Image.new("L", (80, 60), value).save(root / f"img{i}.png")
    return root


def bench(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["bench", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_report_and_table_on_a_tiny_model(
    model: str, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "out.json"
    argv = [model, "--images", str(folder), *QUICK, "--json", str(out_json)]
    code, out, err = bench(argv, capsys)
    assert code == 0, err
    assert err == ""  # no progress when stderr is not a terminal, no samples note
    report: dict[str, Any] = json.loads(out_json.read_text())
    assert report["schema"] == "pneumo-bench-report/1"
    assert report["machine"]["cpu"]["usable_cpus"] >= 1
    assert report["machine"]["cpu"]["model"]
    assert report["versions"]["onnxruntime"] == ort.__version__
    assert report["model"]["files"] == {"fp32": {"file": "tiny.onnx", "sha256": sha256_file(model)}}
    assert report["images"] | {"median_bytes": 0} == {
        "folder": str(folder),
        "shipped_samples": False,
        "found": 4,
        "used": 4,
        "sampled_every": 1,
        "median_bytes": 0,
        "readable": 4,
        "unreadable": [],
    }
    settings = report["settings"]
    assert settings["batch_sizes"] == [1, 2] and settings["batch_size"] == 2
    assert settings["seconds"] == 0.05 and settings["devices"] == ["cpu"]
    assert settings["variants"] == ["fp32"] and settings["workers"] >= 1
    (run,) = report["runs"]
    assert run["device"] == "cpu" and run["provider"] == "CPUExecutionProvider"
    assert [r["batch"] for r in run["model_only"]] == [1, 2]
    for row in run["model_only"]:
        assert row["images_per_second"] > 0 and row["latency_ms"]["n"] >= 1
    pipeline = run["pipeline"]
    assert pipeline["images_per_pass"] == 2 * MIN_PASS_BATCHES  # 4 images, twice
    assert pipeline["passes"] >= 3 and pipeline["images_per_second"] > 0
    assert len(run["decode_only"]["rounds"]) == 3
    assert run["one_image_latency_ms"]["p50"] > 0
    c = run["ceiling"]
    assert c["formula"] == "c / (d + m)"
    assert set(c["cpu_ms_per_image"]) == {"decode", "model", "pipeline"}
    assert c["pipeline_cores_busy"] > 0 and c["pipeline_cpu_percent_of_stages"] > 0
    assert c["ideal_images_per_second"] > 0 and c["pipeline_percent_of_ideal"] > 0
    # The table: the model-only pivot, the pipeline against its ideal, the formula spelled out.
    assert "model only: images/s" in out and "batch 1" in out and "batch 2" in out
    assert "decode only" in out and "of ideal" in out
    assert f"{c['pipeline_percent_of_ideal']:.1f}%" in out
    assert "ideal = c / (d + m): c cores; d = decode threads / decode-only img/s" in out
    assert "cpu fp32: ideal = " in out and "decoding is" in out
    assert "CPU time per image: decoding " in out and "ms in the pipeline" in out
    assert f"wrote {out_json}" in out


def test_shipped_samples_are_used_and_said(model: str, capsys: pytest.CaptureFixture) -> None:
    code, out, err = bench([model, *QUICK], capsys)
    assert code == 0, err
    assert "no --images: measuring on the 6 sample X-rays shipped with pneumo-onnx" in err
    assert "the 6 sample X-rays shipped with pneumo-onnx (pass --images DIR for yours)" in out


def test_every_variant_of_a_model_folder(
    write_model, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = tmp_path / "repo"
    version.mkdir()
    shutil.copy(write_model(contract=CONTRACT), version / "model.onnx")
    shutil.copy(write_model(contract=CONTRACT), version / "model.int8.onnx")
    code, out, err = bench([str(version), "--variant", "all", *QUICK], capsys)
    assert code == 0, err
    rows = [line.split()[:2] for line in out.splitlines() if line.startswith("cpu ")]
    assert rows.count(["cpu", "fp32"]) == 2 and rows.count(["cpu", "int8"]) == 2


def test_unreadable_images_are_left_out_and_listed(
    model: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, out, _ = bench([model, "--images", str(folder), *QUICK], capsys)
    assert code == 1
    assert "1 unreadable, left out" in out
    assert "unreadable: broken.jpg: broken.jpg is truncated or corrupt" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-sizes", "0"], "argument --batch-sizes: expected integers >= 1 like 1,8,32"),
        (["--batch-sizes", "1,x"], "argument --batch-sizes: expected integers >= 1 like 1,8,32"),
        (["--seconds", "0"], "argument --seconds: expected a positive number, got '0'"),
        (["--seconds", "601"], "seconds must be in (0, 600], got 601.0"),
        (["--threads", "0"], "threads must be at least 1, got 0"),
        (["--workers", "0"], "workers must be at least 1, got 0"),
        (["--batch-size", "0"], "batch size must be at least 1, got 0"),
        (["--variant", "int9"], "argument --variant: invalid choice: 'int9'"),
        (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
        (["--images", "/nonexistent/xrays"], "/nonexistent/xrays: no such folder"),
        (["--json", "/nonexistent/dir/out.json"], "--json /nonexistent/dir/out.json: no such"),
        (["--variant", "all"], "--variant all runs the files of a model folder; you named a file"),
        (["--variant", "int8"], "--variant picks a file inside a model folder; you named a file"),
    ],
    ids=[
        "batch-sizes-zero",
        "batch-sizes-text",
        "seconds-zero",
        "seconds-too-long",
        "threads",
        "workers",
        "batch-size",
        "variant",
        "device",
        "images",
        "json-folder",
        "all-of-a-file",
        "variant-of-a-file",
    ],
)
def test_usage_errors(
    model: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = bench([model, *argv], capsys)
    assert code == 2
    assert message in err and err.startswith(("error: ", "usage: ")), err
    assert out == ""


def test_folders_without_usable_images(
    model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = bench([model, "--images", str(empty)], capsys)
    assert code == 2 and f"error: no images in {empty}" in err
    (empty / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, _, err = bench([model, "--images", str(empty)], capsys)
    assert code == 2
    assert "error: none of the 1 images could be read (broken.png: broken.png " in err


def test_missing_model_and_missing_cuda(
    model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = bench([str(tmp_path / "nope.onnx")], capsys)
    assert code == 2 and "no such model file or folder" in err
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        code, _, err = bench([model, "--device", "cuda", *QUICK], capsys)
        assert code == 2 and "error: device 'cuda' needs onnxruntime's CUDAExecutionProvider" in err


@pytest.mark.parametrize(
    ("device", "model_rate", "ideal", "advice"),
    [
        ("cpu", 200.0, 66.7, "decoding is 67% of the work, the model 33%; each extra core"),
        ("cuda", 50.0, 50.0, "the GPU is the limit"),
        ("cuda", 500.0, 100.0, "decoding on the CPU is the limit"),
    ],
    ids=["cpu", "cuda-model-bound", "cuda-decode-bound"],
)
def test_ceiling_arithmetic(device: str, model_rate: float, ideal: float, advice: str) -> None:
    """2 cores; decoding 100 img/s on 2 threads (20 core-ms per image)."""
    c = ceiling(device, 2, 100.0, 2, model_rate, 2, pipeline_rate=30.0)
    assert c["decode_core_ms_per_image"] == 20.0
    assert c["ideal_images_per_second"] == ideal
    assert c["pipeline_percent_of_ideal"] == round(100 * 30.0 / ideal, 1)
    assert any(advice in line for line in c["advice"]), c["advice"]
    assert any("reaches" in line and "--workers" in line for line in c["advice"])
    if device == "cpu":  # m = 2 threads / 200 img/s = 10 core-ms; 2 / 30 ms = 66.7 img/s
        assert c["model_core_ms_per_image"] == 10.0 and c["decode_share"] == 0.667
        assert c["per_extra_core_images_per_second"] == 33.3
        assert c["without_model_on_the_cores_images_per_second"] == 100.0


def test_cpu_time_says_whether_the_cores_were_ours() -> None:
    """A shared machine: the pipeline kept 0.72 of 2 cores busy (18 ms of CPU per image at
    40 img/s), and ran the stages for 120% of their CPU time alone."""
    cpu_ms = {"decode": 10.0, "model": 5.0, "pipeline": 18.0}
    c = ceiling("cpu", 2, 100.0, 2, 200.0, 2, pipeline_rate=40.0, cpu_ms=cpu_ms)
    assert c["cpu_ms_per_image"] == cpu_ms
    assert c["pipeline_cpu_percent_of_stages"] == 120.0 and c["pipeline_cores_busy"] == 0.72
    assert "kept 0.72 of 2 cores busy: other work shares this machine" in c["advice"][0]
    quiet = ceiling("cpu", 2, 100.0, 2, 200.0, 2, pipeline_rate=110.0, cpu_ms=cpu_ms)
    assert quiet["pipeline_cores_busy"] == 1.98
    assert not any("cores busy" in line for line in quiet["advice"])


def test_a_well_used_pipeline_gets_no_tuning_advice() -> None:
    c = ceiling("cpu", 2, 100.0, 2, 200.0, 2, pipeline_rate=64.0)
    assert c["pipeline_percent_of_ideal"] == 96.0
    assert not any("reaches" in line for line in c["advice"])


def test_time_box_counts_and_pass_size() -> None:
    calls: list[int] = []
    durations = timed_calls(lambda: calls.append(1), seconds=0, warmup=2, min_calls=3)
    assert len(calls) == 5 and len(durations) == 3
    paths = [Path(f"{i}.png") for i in range(3)]
    assert len(pass_images(paths, 8)) == 33  # repeated to fill 4 batches of 8
    assert pass_images(paths * 20, 8) == paths * 20


def test_progress_only_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Terminal(), io.StringIO()
    for stream in (tty, pipe):
        progress = StepProgress(stream)
        progress.update(0, 7, "checking the images")
        progress.update(1, 7, "cpu fp32: model only, batch 1")
        progress.close()
    assert pipe.getvalue() == ""
    text = tty.getvalue()
    assert "\r[0/7] checking the images" in text
    assert "\r[1/7] cpu fp32: model only, batch 1" in text and text.endswith("\r")


def test_bench_as_a_real_process(tmp_path: Path) -> None:
    """`pneumo bench` on the shipped model and samples, short figures, as a user runs it."""
    out_json = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pneumo_onnx.engine.cli",
            "bench",
            "--seconds",
            "0.1",
            "--json",
            str(out_json),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "no --images: measuring on the 6 sample X-rays" in done.stderr
    assert "\r" not in done.stderr  # stderr is a pipe here: no progress line
    assert re.search(r"^cpu +fp32 +\d+ ", done.stdout, re.MULTILINE), done.stdout
    assert "cpu fp32: ideal = " in done.stdout
    report = json.loads(out_json.read_text())
    assert report["model"]["name"] == "pneumonia"
    assert len(report["model"]["files"]["fp32"]["sha256"]) == 64
    assert report["runs"][0]["pipeline"]["images_per_second"] > 0
