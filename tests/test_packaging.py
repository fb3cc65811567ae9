"""The wheel ships every package of the code (an editable install would hide one left out),
its licence metadata covers what it ships (MIT code, CC BY 4.0 X-rays and the model trained
on them, Swagger UI's licences), and every variant `pneumo info` lists for the default model
is in the wheel's package data, so an installed `pneumo --variant X` finds its file."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.licenses import canonicalize_license_expression

from pneumo_onnx.engine.repository.resolve import resolve
from pneumo_onnx.engine.repository.variants import VARIANT_FILES

tomllib = pytest.importorskip("tomllib")  # Python 3.11+: the 3.10 runs skip these checks
ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MODEL_DIR = ROOT / "models" / "pneumonia"
MODEL_PACKAGE = "pneumo_onnx/models/pneumonia"


def listed_variant_files() -> list[str]:
    """Each variant file `pneumo info` lists, per version: "VERSION/FILE"."""
    versions = sorted(p for p in MODEL_DIR.iterdir() if p.is_dir() and p.name.isdigit())
    assert versions, f"no model versions under {MODEL_DIR}"
    return [
        f"{v.name}/{VARIANT_FILES[variant]}" for v in versions for variant in resolve(v).variants
    ]


def test_every_package_of_the_code_is_listed() -> None:
    """setuptools ships the packages named in pyproject.toml, and only those: a folder of code
    missing there works in a checkout and is absent from the installed server."""
    found = {
        "pneumo_onnx." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("engine", "convert")
        for init in (ROOT / top).rglob("__init__.py")
    }
    listed = set(PROJECT["tool"]["setuptools"]["packages"])
    assert sorted(found - listed) == []


def test_licence_is_one_valid_spdx_expression_with_its_files() -> None:
    project = PROJECT["project"]
    expression = project["license"]
    assert canonicalize_license_expression(expression) == expression
    assert {"MIT", "CC-BY-4.0"} <= set(expression.split(" AND "))
    for name in project["license-files"]:
        assert (ROOT / name).is_file(), name
    cc_by = (ROOT / "LICENSES" / "CC-BY-4.0.txt").read_text()
    assert "Creative Commons Attribution 4.0 International Public License" in cc_by
    # CC BY asks for attribution where the data travels: beside the images, in the wheel.
    assert "CC BY 4.0" in (ROOT / "engine" / "samples" / "README.md").read_text()


def test_every_listed_variant_matches_the_package_data() -> None:
    """A cheap first check of what the wheel test below proves."""
    patterns = PROJECT["tool"]["setuptools"]["package-data"]["pneumo_onnx.models.pneumonia"]
    for name in listed_variant_files():
        assert any(fnmatch.fnmatch(name, p) for p in patterns), f"{name} not in package data"


@pytest.mark.slow
def test_the_wheel_ships_every_listed_variant_and_its_licences(tmp_path: Path) -> None:
    # A copy without build outputs: a stale build/lib of the checkout would be packed as is.
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__"),
    )
    # Build isolation: the licence expression (PEP 639) needs the setuptools>=77 that
    # pyproject's build-system asks for, whatever setuptools the test environment holds.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("pneumo_onnx-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        headers = z.read(metadata).decode().splitlines()
    assert f"License-Expression: {PROJECT['project']['license']}" in headers
    for name in PROJECT["project"]["license-files"]:
        assert f"License-File: {name}" in headers
        assert any(n.endswith(f".dist-info/licenses/{name}") for n in names), name
    missing = [f for f in listed_variant_files() if f"{MODEL_PACKAGE}/{f}" not in names]
    assert not missing, f"variants pneumo info lists but the wheel lacks: {missing}"
