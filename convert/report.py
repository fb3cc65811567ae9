"""Validation results: a list of named checks, written as JSON or JUnit XML for CI pipelines."""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pneumo_onnx.engine.errors import PneumoError, UsageError, ValidationError

Figures = dict[str, Any]


class CheckFailed(Exception):
    """Raised inside a check: the check ran and the model failed it."""

    def __init__(self, detail: str, figures: Figures | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.figures = figures or {}


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    seconds: float = 0.0
    figures: Figures = field(default_factory=dict)
    skipped: bool = False  # an optional check the model failed: recorded, not fatal
    row: bool = False  # one item (an image) of a larger check: the text shows the first few


@dataclass
class Report:
    subject: str  # the model, as the user named it (several reports in one CI job must differ)
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.passed or c.skipped for c in self.checks)

    def run(
        self,
        name: str,
        fn: Callable[[], tuple[str, Figures]],
        optional: bool = False,
        row: bool = False,
    ) -> bool:
        """Run one check, record pass or fail (never raise for a model's failure). An
        `optional` check that fails is recorded as skipped and does not fail the report; a
        `row` is one item of a larger check (JUnit and JSON list them all, the text a few)."""
        start = time.perf_counter()
        try:
            detail, figures = fn()
            passed = True
        except CheckFailed as e:
            detail, figures, passed = e.detail, e.figures, False
        except UsageError:
            raise
        except PneumoError as e:
            detail, figures, passed = e.message, {}, False
        seconds = round(time.perf_counter() - start, 4)
        skipped = optional and not passed
        self.checks.append(Check(name, passed, detail, seconds, figures, skipped, row))
        return passed

    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not (c.passed or c.skipped)]

    def raise_if_failed(self, what: str, hint: str = "") -> None:
        if not self.ok:
            raise ValidationError(
                f"{what} failed validation; nothing was written:", self.failures(), hint
            )

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}

    def write(self, path: str | Path) -> None:
        """Write JSON (`.json`) or JUnit XML (`.xml`), chosen by the file's suffix."""
        p = Path(path)
        if p.suffix.lower() == ".json":
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        elif p.suffix.lower() == ".xml":
            text = self.to_junit()
        else:
            raise UsageError(f"--report {p.name}: expected a .json or .xml file name")
        try:
            p.write_text(text)
        except OSError as e:
            raise UsageError(f"cannot write report {p.name}: {e.strerror or e}") from e

    def to_junit(self) -> str:
        """One suite per model, named after it; CI viewers (Jenkins, GitLab) group test cases by
        `classname`, so that carries the model too: two models never share a test name."""
        failures = sum(not (c.passed or c.skipped) for c in self.checks)
        total = sum(c.seconds for c in self.checks)
        suites = ET.Element("testsuites")
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=f"pneumo validate {self.subject}",
            tests=str(len(self.checks)),
            failures=str(failures),
            errors="0",
            skipped=str(sum(c.skipped for c in self.checks)),
            time=f"{total:.4f}",
        )
        classname = "pneumo.validate." + re.sub(r"[^A-Za-z0-9_/-]+", "_", self.subject).replace(
            "/", "."
        ).strip(".")
        for c in self.checks:
            case = ET.SubElement(
                suite, "testcase", classname=classname, name=c.name, time=f"{c.seconds:.4f}"
            )
            if c.passed:
                ET.SubElement(case, "system-out").text = c.detail
            elif c.skipped:
                ET.SubElement(case, "skipped", message=c.detail).text = json.dumps(c.figures)
            else:
                ET.SubElement(case, "failure", message=c.detail).text = json.dumps(c.figures)
        return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"

    def summary_lines(self, rows_shown: int = 20) -> list[str]:
        """One line per check, in order; of the rows, the first `rows_shown` and a count."""
        lines, rows = [], 0
        for c in self.checks:
            rows += c.row
            if not c.row or rows <= rows_shown:
                lines.append(f"{_status(c)}  {c.name}: {c.detail}")
            elif rows == rows_shown + 1:
                hidden = sum(c.row for c in self.checks) - rows_shown
                lines.append(f"...   {hidden} more rows like these (--report lists them all)")
        return lines


def _status(c: Check) -> str:
    return "PASS" if c.passed else "SKIP" if c.skipped else "FAIL"
