"""The house rules that keep the code's layers visible, checked on every run: module size, the
import layers and cycles (import-linter's contracts in pyproject.toml), and that every
sub-package says what it is for."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400
PACKAGES = ("engine", "convert")


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_over_400_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines: split it by job"


def test_every_package_says_what_it_holds() -> None:
    for init in sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc, f"{init.relative_to(ROOT)} has no docstring"


def test_one_import_namespace() -> None:
    """Everything imports our code as pneumo_onnx.*: a bare `engine`/`convert` import would load
    a second copy of a module from the checkout's folders (and does not exist once installed)."""
    bare = []
    for folder in (*PACKAGES, "tests", "parity_tests", "benchmarks", "models"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and node.level == 0
                    else []
                )
                bare += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {n}"
                    for n in names
                    if n.split(".")[0] in PACKAGES
                ]
    assert not bare, bare


def test_the_namespace_links_to_the_folders() -> None:
    for name in (*PACKAGES, "models"):
        link = ROOT / "pneumo_onnx" / name
        assert link.is_symlink() and link.resolve() == (ROOT / name).resolve(), link


def test_import_layers_and_no_cycles() -> None:
    """`lint-imports` keeps every contract of pyproject.toml (layers, TensorFlow-free engine,
    what convert may use, nothing imports the CLI, no cycles)."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
