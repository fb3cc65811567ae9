"""`pneumo batch`: score a folder into CSV or JSON Lines, resumable, losing nothing on interrupt.

Rows are appended and flushed after every model batch, so an interrupted run keeps every row
it finished; `--resume` repairs a torn last line, skips the files already written and goes on.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from pneumo_onnx.engine.errors import FileAccessError, UsageError
from pneumo_onnx.engine.runtime.engine import Engine, check_batch_options
from pneumo_onnx.engine.runtime.listing import find_images
from pneumo_onnx.engine.runtime.results import ROW_COLUMNS, Result, Row, to_row
from pneumo_onnx.engine.runtime.sandbox import Sandbox

FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
STDOUT = "-"  # as an output path: CSV on standard output


@dataclass
class Summary:
    total: int = 0
    skipped: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0


def output_format(path: Path) -> str:
    """ "csv" or "jsonl" by the output's name (`-`: CSV on stdout); any other name is a usage
    error, checked before the model loads or the folder is listed."""
    if str(path) == STDOUT:
        return "csv"
    if path.suffix.lower() not in FORMATS:
        raise UsageError(f"-o {path}: expected a .csv or .jsonl file name, or - for stdout")
    return FORMATS[path.suffix.lower()]


class ResultWriter:
    """Append-only results file; the header (CSV) is written once, when the file is new.
    Path `-`: CSV on stdout (nothing to resume)."""

    def __init__(self, path: Path, resume: bool, overwrite: bool) -> None:
        self._owned = str(path) != STDOUT
        if resume and not self._owned:
            raise UsageError("--resume needs an output file, not -o - (stdout)")
        self.format = output_format(path)
        self.done: set[str] = set()
        self._file = self._open(path, resume, overwrite) if self._owned else sys.stdout
        self._csv = csv.DictWriter(self._file, ROW_COLUMNS) if self.format == "csv" else None
        if self._csv is not None and (not self._owned or self._file.tell() == 0):
            self._csv.writeheader()

    def _open(self, path: Path, resume: bool, overwrite: bool) -> TextIO:
        if path.exists() and not (resume or overwrite):
            raise UsageError(
                f"{path} exists: pass --resume to continue it, or --overwrite to replace it"
            )
        if overwrite and not resume and path.exists():
            path.unlink()
        self.done = _repair_and_read(path, self.format) if path.exists() else set()
        try:
            return path.open("a", newline="", encoding="utf-8")
        except OSError as e:
            raise FileAccessError("write", path, e) from e

    def write(self, row: Row) -> None:
        if self._csv is not None:
            self._csv.writerow(row)
        else:
            self._file.write(json.dumps(row) + "\n")

    def flush(self) -> None:
        self._file.flush()
        if self._owned:  # a pipe cannot be synced
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self.flush()
        if self._owned:
            self._file.close()


class Progress:
    """A one-line progress bar with rate and ETA on a terminal; silent when piped."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.start = self._last = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self._last < 0.2 and done < self.total):
            return
        self._last = now
        rate = done / (now - self.start) if now > self.start else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        width = 30
        filled = int(width * done / self.total) if self.total else width
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(
            f"\r[{bar}] {done}/{self.total} {rate:6.1f} img/s "
            f"ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")


def run_batch(
    engine: Engine,
    folder: Path,
    output: Path,
    recursive: bool = False,
    batch_size: int = 32,
    workers: int | None = None,
    threshold: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
    sandbox: Sandbox | None = None,
) -> Summary:
    """Score the images of `folder` into `output`; with a `sandbox`, decoded in its worker
    processes (a poison file is an error row, never the end of the run)."""
    check_batch_options(batch_size, workers)
    output_format(output)
    images = find_images(folder, recursive=recursive)
    writer = ResultWriter(output, resume, overwrite)
    todo = [p for p in images if str(p) not in writer.done]
    summary = Summary(skipped=len(images) - len(todo))
    progress = Progress(len(todo))
    start = time.perf_counter()
    try:
        for count, (path, result) in enumerate(
            _rows(engine, todo, threshold, batch_size, workers, sandbox), 1
        ):
            writer.write(to_row(str(path), result))
            if "error" in result:
                summary.errors.append((str(path), result["error"]))
            else:
                summary.counts[result["prediction"]] += 1
            summary.total = count
            if count % batch_size == 0:
                writer.flush()
                progress.update(count)
    finally:
        writer.close()
        progress.update(summary.total)
        progress.close()
        summary.seconds = time.perf_counter() - start
    return summary


def _rows(
    engine: Engine,
    paths: list[Path],
    threshold: float | None,
    batch_size: int,
    workers: int | None,
    sandbox: Sandbox | None,
) -> Iterator[tuple[Path, Result]]:
    for index, result in engine.stream(paths, threshold, batch_size, workers, sandbox):
        yield paths[index], result


def _repair_and_read(path: Path, fmt: str) -> set[str]:
    """Drop a torn last line (a run killed mid-write), then return the image paths done."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with path.open("r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    text = data.decode("utf-8", errors="replace")
    if not text:
        return set()
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        if tuple(reader.fieldnames or ()) != ROW_COLUMNS:
            raise UsageError(f"{path} is not a pneumo results file (columns differ): not resumed")
        return {row["image_path"] for row in reader}
    done = set()
    for number, line in enumerate(text.splitlines(), 1):
        try:
            done.add(json.loads(line)["image_path"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UsageError(f"{path} line {number} is not a pneumo result: not resumed") from e
    return done
