"""`pip install .` alone (no extras) gives a working, TensorFlow-free `pneumo` in a fresh venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "tensorflow-cpu", "keras", "tf-keras", "tf2onnx", "onnx")


def venv_size_mb(venv: Path) -> float:
    return (
        sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6
    )


@pytest.mark.slow
def test_plain_install_is_tensorflow_free_and_names_the_extra(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    # A copy without build outputs: a stale build/lib of the checkout would be packed as is.
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__"),
    )
    install = subprocess.run(
        [bin_dir / "python", "-m", "pip", "install", str(source)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    assert "would be ignored" not in install.stdout + install.stderr  # packaging config clean
    listed = subprocess.run(
        [bin_dir / "python", "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    installed = {line.split("==")[0] for line in listed.split()}
    assert "onnxruntime" in installed and "pneumo-onnx" in installed
    assert installed.isdisjoint(HEAVY), installed & set(HEAVY)

    samples = subprocess.run(
        [
            bin_dir / "python",
            "-c",
            "from pneumo_onnx.engine.runtime.samples import sample_images\n"
            "print(len(sample_images()))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert samples.stdout.strip() == "6", samples.stderr  # package data made it into the wheel
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not (site / "pneumo_onnx" / "models" / "training").exists()  # stays in the checkout
    assert not list((site / "pneumo_onnx" / "models").glob("*.py"))[1:]  # only its __init__
    assert (site / "pneumo_onnx" / "py.typed").is_file()
    assert not (site / "engine").exists() and not (site / "convert").exists()  # one namespace
    version = subprocess.run(
        [
            bin_dir / "python",
            "-c",
            "import importlib.metadata as m, pneumo_onnx; "
            "print(m.version('pneumo-onnx'), pneumo_onnx.__version__)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout.split()
    assert len(version) == 2 and version[0] == version[1]  # one version source

    for argv in (["convert", "m.keras", "-o", "repo"], ["validate", "m.onnx"]):
        run = subprocess.run(
            [bin_dir / "pneumo", *argv], capture_output=True, text=True, cwd=tmp_path
        )
        assert run.returncode == 2
        assert f"pneumo {argv[0]} needs the 'convert' extra" in run.stderr
        assert "pip install 'pneumo-onnx[convert]'" in run.stderr
    # The default model travels as package data: score a shipped sample from an empty folder.
    from pneumo_onnx.engine.runtime.samples import sample_images

    image = sample_images()[-1]
    scored = subprocess.run(
        [bin_dir / "pneumo", "predict", str(image), "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert scored.returncode == 0, scored.stderr
    assert '"prediction"' in scored.stdout
    info = subprocess.run(
        [bin_dir / "pneumo", "info"], capture_output=True, text=True, cwd=tmp_path
    )
    assert (
        info.returncode == 0
        and "site-packages/pneumo_onnx/models/pneumonia/2/model.onnx" in info.stdout
    )
    # engine.serve's protocol-free helpers are in the wheel and need no extra.
    monitor = subprocess.run(
        [bin_dir / "pneumo", "monitor", "summary", "--db", "none.db"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert monitor.returncode == 2 and "error: no prediction log at none.db" in monitor.stderr
    # `pneumo bench` ships in the wheel and measures the shipped model on the shipped samples.
    measured = subprocess.run(
        [bin_dir / "pneumo", "bench", "--seconds", "0.1", "--batch-sizes", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert measured.returncode == 0, measured.stderr
    assert "ideal = c / (d + m)" in measured.stdout and "cpu fp32: ideal = " in measured.stdout

    # The benchmark harness (checkout only) runs its engine rows on the installed engine
    # without TensorFlow, and says why the rest (Keras baselines, FLOP count, chart) is skipped.
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "benchmarks").symlink_to(ROOT / "benchmarks")
    bench = subprocess.run(
        [
            bin_dir / "python",
            "-m",
            "benchmarks",
            "--suite",
            "model,pipeline",
            "--images",
            str(ROOT / "engine" / "samples"),
            "--max-images",
            "2",
            "--repeats",
            "1",
            "--batch-sizes",
            "1",
            "--out",
            str(tmp_path / "bench"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(shim)},
    )
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert "| ort-fp32 | " in bench.stdout and "| engine-fast | " in bench.stdout
    assert "skipped `keras-predict`: TensorFlow/Keras not installed" in bench.stdout
    assert "skipped `keras-batch`: TensorFlow/Keras not installed" in bench.stdout

    size = venv_size_mb(venv)
    print(f"TensorFlow-free venv: {size:.0f} MB")
    assert size < 400
