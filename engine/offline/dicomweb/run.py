"""`pneumo batch --dicomweb`: score the frontal chest X-rays of a DICOMweb server into a
results file, resumable like a folder run, optionally storing one SR per image back.

The same engine, preprocessing and DICOM decoder as for files: each instance is fetched as
its DICOM file and decoded in the decode sandbox. Rows are the folder run's, plus the
instance's three UIDs, why it was skipped (not a frontal chest X-ray) and the SR stored for
it. A row is written once its SR is stored, so a resumed run (keyed on SOPInstanceUID) never
misses an SR, and never stores one twice (an SR's UIDs are made from what it reports on); a
server failure stops the run with what it finished written.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pneumo_onnx.engine.errors import ImageError
from pneumo_onnx.engine.explain.sr import Algorithm, build_sr, source_header
from pneumo_onnx.engine.offline.batch import Progress, ResultWriter, Summary
from pneumo_onnx.engine.offline.dicomweb.client import Client, Found
from pneumo_onnx.engine.offline.dicomweb.views import incomplete, skip_reason
from pneumo_onnx.engine.runtime.decoders import named_bytes
from pneumo_onnx.engine.runtime.engine import Engine, check_batch_options
from pneumo_onnx.engine.runtime.results import ROW_COLUMNS, Result, Scored, failed, to_row
from pneumo_onnx.engine.runtime.sandbox import Sandbox

UID_COLUMNS: Final = ("study_instance_uid", "series_instance_uid", "sop_instance_uid")
COLUMNS: Final = (*ROW_COLUMNS, *UID_COLUMNS, "skipped", "sr_sop_instance_uid")
KEY: Final = "sop_instance_uid"


@dataclass
class DicomwebSummary(Summary):
    """A folder run's summary, plus the instances not scored (not frontal chest X-rays, or not
    images at all) and the SRs stored."""

    not_scored: int = 0
    reports: int = 0
    found: int = 0


@dataclass(frozen=True)
class Options:
    studies: list[str]
    since: str | None = None  # YYYYMMDD
    any_view: bool = False
    store_sr: bool = False
    threshold: float | None = None
    batch_size: int = 32


def run_dicomweb(
    engine: Engine,
    client: Client,
    output: Path,
    options: Options,
    resume: bool = False,
    overwrite: bool = False,
    sandbox: Sandbox | None = None,
) -> DicomwebSummary:
    """Search, fetch, score (and store SRs) batch by batch into `output`."""
    check_batch_options(options.batch_size, None)
    reporter = _Reporter(client, Algorithm.of(engine), sandbox) if options.store_sr else None
    found = list(client.search(options.studies, options.since))  # refused credentials: no file
    writer = ResultWriter(output, resume, overwrite, columns=COLUMNS, key=KEY)
    todo = [f for f in found if f.sop not in writer.done]
    summary = DicomwebSummary(skipped=len(found) - len(todo), found=len(found))
    progress = Progress(len(todo))
    start = time.perf_counter()
    done = 0
    try:
        for chunk in _chunks(todo, options.batch_size):
            fetched: list[tuple[Found, bytes]] = []
            for f in chunk:
                reason = _reason(client, f, options.any_view)
                if reason is not None:
                    writer.write(_row(client, f, None, skipped=reason))
                    summary.not_scored += 1
                    continue
                try:
                    fetched.append((f, client.retrieve(f)))
                except ImageError as e:
                    _record(writer, summary, client, f, failed(e.message))
            sources = [named_bytes(data, f"{f.sop}.dcm") for f, data in fetched]
            results = engine.stream(sources, options.threshold, options.batch_size, None, sandbox)
            for index, result in results:
                f, data = fetched[index]
                sr_uid = None
                if reporter is not None and "error" not in result:
                    try:
                        sr_uid = reporter.store(f, data, result)
                        summary.reports += 1
                    except ImageError as e:  # its header, read again for the SR
                        result = failed(f"scored, but no SR could be made: {e.message}")
                _record(writer, summary, client, f, result, sr_uid)
            writer.flush()
            done += len(chunk)
            progress.update(done)
    finally:
        writer.close()
        progress.close()
        summary.seconds = time.perf_counter() - start
    return summary


class _Reporter:
    """Builds and stores the SRs of one run, under UIDs made from what they report on
    (`Algorithm.report_uids`): a report stored by a run killed before its row was written is
    stored again by the resumed run under the same UIDs, which a PACS takes as the same
    object, not a copy."""

    def __init__(self, client: Client, algorithm: Algorithm, sandbox: Sandbox | None) -> None:
        self.client = client
        self.algorithm = algorithm
        self.sandbox = sandbox
        self.numbers: dict[str, int] = {}  # study -> the last instance number given

    def store(self, f: Found, data: bytes, result: Scored) -> str:
        """Store the SR of `result` for instance `f`: its SOPInstanceUID."""
        series, uid = self.algorithm.report_uids(f.study, f.sop, result["threshold"])
        number = self.numbers[f.study] = self.numbers.get(f.study, 0) + 1
        header = source_header(data, f"{f.sop}.dcm", self.sandbox)
        self.client.store(f.study, [build_sr(header, result, self.algorithm, series, uid, number)])
        return uid


def _reason(client: Client, f: Found, any_view: bool) -> str | None:
    attributes = f.attributes
    if incomplete(attributes):
        try:
            attributes = {**client.metadata(f), **attributes}
        except ImageError as e:
            return f"not checked: {e.message}"
    return skip_reason(attributes, any_view)


def _record(
    writer: ResultWriter,
    summary: Summary,
    client: Client,
    f: Found,
    result: Result,
    sr_uid: str | None = None,
) -> None:
    writer.write(_row(client, f, result, sr_uid=sr_uid))
    if "error" in result:
        summary.errors.append((f.sop, result["error"]))
    else:
        summary.counts[result["prediction"]] += 1
    summary.total += 1


def _row(
    client: Client,
    f: Found,
    result: Result | None,
    skipped: str | None = None,
    sr_uid: str | None = None,
) -> dict[str, Any]:
    """The folder run's row of `result` (all empty but the URL when skipped), plus ours."""
    url = f"{client.url}/{f.path}"
    base: dict[str, Any] = (
        dict(to_row(url, result))
        if result is not None
        else {**dict.fromkeys(ROW_COLUMNS), "image_path": url}
    )
    return {
        **base,
        "study_instance_uid": f.study,
        "series_instance_uid": f.series,
        "sop_instance_uid": f.sop,
        "skipped": skipped,
        "sr_sop_instance_uid": sr_uid,
    }


def _chunks(items: list[Found], size: int) -> Iterator[list[Found]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
