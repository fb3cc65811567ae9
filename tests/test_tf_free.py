"""The engine never imports TensorFlow, Keras or tf2onnx, directly or indirectly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("tensorflow", "keras", "tf_keras", "tf2onnx")


def run_and_list_modules(code: str, cwd: Path) -> set[str]:
    probe = code + "\nimport sys\nprint('\\n'.join(sys.modules))\n"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return {m.split(".")[0] for m in proc.stdout.split()}


def test_importing_every_engine_module_stays_tensorflow_free(tmp_path: Path) -> None:
    import pneumo_onnx.engine

    root = Path(pneumo_onnx.engine.__file__).parent
    modules = [
        ".".join(("pneumo_onnx.engine", *p.relative_to(root).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        for p in sorted(root.rglob("*.py"))
        if p.stem != "__main__"  # running it would run the CLI
    ]
    assert (
        "pneumo_onnx.engine.runtime.engine" in modules
        and "pneumo_onnx.engine.serve.front.routes.v2" in modules
    )
    loaded = run_and_list_modules("import " + ", ".join(modules), tmp_path)
    assert loaded.isdisjoint(FORBIDDEN), loaded & set(FORBIDDEN)


def test_cli_validate_without_against_stays_tensorflow_free(tmp_path: Path, write_model) -> None:
    model = write_model()
    code = (
        f"from pneumo_onnx.engine.cli import main\nassert main(['validate', {str(model)!r}]) == 0"
    )
    loaded = run_and_list_modules(code, tmp_path)
    assert "onnxruntime" in loaded and "onnx" in loaded
    assert loaded.isdisjoint(FORBIDDEN), loaded & set(FORBIDDEN)


def test_cli_predict_batch_info_stay_tensorflow_free(tmp_path: Path) -> None:
    from pneumo_onnx.engine.runtime.samples import SAMPLES_DIR

    code = (
        "from pneumo_onnx.engine.cli import main\n"
        f"assert main(['predict', {str(next(SAMPLES_DIR.glob('*/*.jpeg')))!r}]) == 0\n"
        f"assert main(['batch', {str(SAMPLES_DIR)!r}, '--recursive', '-o', 'r.csv']) == 0\n"
        "assert main(['info']) == 0\n"
    )
    loaded = run_and_list_modules(code, tmp_path)
    assert "onnxruntime" in loaded
    assert loaded.isdisjoint(FORBIDDEN), loaded & set(FORBIDDEN)
