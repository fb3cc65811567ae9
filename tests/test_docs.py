"""The documentation is checked like code: the site builds with `mkdocs build --strict`
(offline: no plugin, every link and anchor resolved, every page in the navigation), and the
examples marked runnable in README.md and docs/*.md run against the shipped model and sample
X-rays, so that a newcomer's first command works and the pages cannot drift from the program.

The convention (invisible once rendered): a fenced `python` or `bash` block right after the
line `<!-- runnable -->` is run; `<!-- runnable slow -->` marks one that needs the `convert`
extra (TensorFlow), run only by the slow test. A `text` block right after `<!-- output -->`
is what the runnable block before it prints, where `...` stands for anything. Each page's
blocks run in order in one temporary folder holding copies of `engine/samples/` and
`models/`, so the paths of a clone work there and nothing is written into the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = re.compile(r"<!-- runnable( slow)? -->")
OUTPUT = "<!-- output -->"
FENCE = re.compile(r"```(\w*)\s*$")
LANGUAGES = ("python", "bash")
FIRST_SCREEN = 50  # README lines a newcomer sees before scrolling
SECONDS_PER_EXAMPLE = 300


@dataclass(frozen=True)
class Example:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    slow: bool
    output: str | None  # what the README says it prints

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _fenced(lines: list[str], start: int, page: Path) -> tuple[str, str, int]:
    """The fenced block opening at or after `start` (blank lines skipped): its language, its
    text, and the index of the line after its closing fence."""
    i = start
    while i < len(lines) and not lines[i].strip():
        i += 1
    opening = FENCE.match(lines[i]) if i < len(lines) else None
    assert opening, f"{page.name}:{start}: a marker must be followed by a fenced code block"
    end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
    assert end is not None, f"{page.name}:{i + 1}: code block never closed"
    return opening.group(1), "\n".join(lines[i + 1 : end]) + "\n", end + 1


def examples(page: Path) -> list[Example]:
    """The runnable examples of one page, in order, each with the output it claims."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Example] = []
    i = 0
    while i < len(lines):
        marker = RUNNABLE.fullmatch(lines[i].strip())
        if marker is None:
            i += 1
            continue
        line = i + 2  # the fence, as an editor counts lines
        language, code, i = _fenced(lines, i + 1, page)
        assert language in LANGUAGES, f"{page.name}:{line}: runnable blocks are python or bash"
        output = None
        after = next((j for j in range(i, len(lines)) if lines[j].strip()), len(lines))
        if after < len(lines) and lines[after].strip() == OUTPUT:
            kind, output, i = _fenced(lines, after + 1, page)
            assert kind == "text", f"{page.name}:{after + 1}: an output block is ```text"
        found.append(Example(page, line, language, code, bool(marker.group(1)), output))
    return found


ALL = {page: examples(page) for page in PAGES}


def _pages(slow: bool) -> list[Path]:
    return [page for page, found in ALL.items() if any(e.slow == slow for e in found)]


def _workspace(folder: Path) -> dict[str, str]:
    """A folder that looks like the root of a clone (samples, models) with `pneumo` on the
    PATH running this checkout's code; returns the environment to run examples with."""
    shutil.copytree(ROOT / "engine" / "samples", folder / "engine" / "samples")
    shutil.copytree(ROOT / "models", folder / "models", ignore=shutil.ignore_patterns("training"))
    bin_dir = folder / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "pneumo"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pneumo_onnx.engine.cli "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "PYTHONPATH": python_path,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "MPLBACKEND": "Agg",
    }


def _run(example: Example, folder: Path, env: dict[str, str]) -> None:
    if example.language == "python":
        command = [sys.executable, "-c", example.code]
    else:
        command = ["bash", "-euo", "pipefail", "-c", example.code]
    done = subprocess.run(
        command,
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=SECONDS_PER_EXAMPLE,
        check=False,
    )
    shown = (
        f"{example.where}\n{example.code}\n"
        f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    )
    assert done.returncode == 0, f"example exited {done.returncode}: {shown}"
    if example.output is not None:
        pattern = ".*?".join(re.escape(part) for part in example.output.strip().split("..."))
        assert re.fullmatch(pattern, done.stdout.strip(), re.DOTALL), (
            f"the page says it prints:\n{example.output}\nit printed: {shown}"
        )


def _run_page(page: Path, slow: bool, folder: Path) -> None:
    env = _workspace(folder)
    for example in ALL[page]:
        if example.slow == slow:
            _run(example, folder, env)


def test_the_site_builds_offline_and_strict(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}{done.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()


def test_the_readme_opens_with_a_python_and_a_cli_example_that_run() -> None:
    first = {e.language: e for e in reversed(ALL[ROOT / "README.md"]) if not e.slow}
    for language, call in (("python", "Engine.load()"), ("bash", "pneumo predict")):
        example = first.get(language)
        assert example is not None, f"README.md has no runnable {language} example"
        assert example.line <= FIRST_SCREEN, f"{example.where}: not on the first screen"
        assert call in example.code and example.output, f"{example.where}: {call}, and its output"


def test_every_marker_is_found() -> None:
    """A marker the parser missed (a typo, a stray space) would leave an example unchecked."""
    for page, found in ALL.items():
        lines = page.read_text(encoding="utf-8").splitlines()
        markers = sum(1 for line in lines if re.fullmatch(r"\s*<!--.*runnable.*-->\s*", line))
        assert markers == len(found), f"{page.name}: {markers} markers, {len(found)} examples"


@pytest.mark.parametrize("page", _pages(slow=False), ids=lambda p: p.name)
def test_examples_run(page: Path, tmp_path: Path) -> None:
    _run_page(page, slow=False, folder=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages(slow=True), ids=lambda p: p.name)
def test_examples_that_convert_run(page: Path, tmp_path: Path) -> None:
    _run_page(page, slow=True, folder=tmp_path)
