"""What the server does with a DICOM upload beyond scoring it: the UIDs its prediction is logged
with, for audit, and the Structured Report `/predict` answers when asked for
`Accept: application/dicom`.

A DICOM header is untrusted input like its pixels: it is parsed in a decode worker
(`explain.sr.header_task`), and only the attributes a report copies come back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pneumo_onnx.engine.errors import PneumoError
from pneumo_onnx.engine.explain.sr import Algorithm, build_sr, header_task, require_highdicom
from pneumo_onnx.engine.runtime.decoders import format_of
from pneumo_onnx.engine.runtime.results import Scored
from pneumo_onnx.engine.serve.dataplane.decoding import Decoders
from pneumo_onnx.engine.serve.dataplane.items import Item
from pneumo_onnx.engine.serve.dataplane.registry import Served

log = logging.getLogger(__name__)
# DICOM JSON tags of the UIDs logged: StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID.
STUDY, SERIES, SOP = "0020000D", "0020000E", "00080018"


@dataclass(frozen=True)
class Uids:
    study: str | None
    series: str | None
    sop: str | None


def is_dicom(item: Item) -> bool:
    data = item.data
    if data is None:
        return False
    found = format_of(data[:132], item.name or "")
    return found is not None and found.name == "DICOM"


async def header(decoders: Decoders, data: bytes, name: str | None) -> dict[str, Any]:
    """The attributes a report copies from the image, as DICOM JSON (parsed in a worker)."""
    return dict(await decoders.parse(len(data), header_task, data, name or "the upload"))


async def uids_of(decoders: Decoders, items: list[Item]) -> list[Uids | None]:
    """Per item: its DICOM UIDs, or None (not DICOM, or its header unreadable: the audit row
    says what is known, and the image's own error, if any, is the scoring's to report)."""
    found: list[Uids | None] = []
    for item in items:
        if not is_dicom(item) or item.data is None:
            found.append(None)
            continue
        try:
            attributes = await header(decoders, item.data, item.name)
        except PneumoError as e:
            log.info("no UIDs for the audit of %s: %s", item.name or "an upload", e.message)
            found.append(None)
            continue
        found.append(
            Uids(_value(attributes, STUDY), _value(attributes, SERIES), _value(attributes, SOP))
        )
    return found


def _value(attributes: dict[str, Any], tag: str) -> str | None:
    values = attributes.get(tag, {}).get("Value") or [None]
    return str(values[0]) if values[0] is not None else None


class Reports:
    """Structured Reports of scored uploads, one algorithm identity per model version (the
    sha256 of its file is read once, not per request)."""

    def __init__(self, decoders: Decoders) -> None:
        self.decoders = decoders
        self._algorithms: dict[tuple[str, str, str], Algorithm] = {}

    async def report(self, served: Served, image: bytes, result: Scored, name: str | None) -> bytes:
        """The SR of `result` for the DICOM `image`, as a DICOM file (the `dicomweb` extra)."""
        require_highdicom()
        from pydicom import Dataset

        source = Dataset.from_json(await header(self.decoders, image, name))
        algorithm = await self._algorithm(served)
        study, sop = (str(source.get(k, "")) for k in ("StudyInstanceUID", "SOPInstanceUID"))
        series, uid = algorithm.report_uids(study, sop, result["threshold"])
        return await self.decoders.run(build_sr, source, result, algorithm, series, uid, 1)

    async def _algorithm(self, served: Served) -> Algorithm:
        key = (served.name, str(served.version), served.engine.model.variant)
        if key not in self._algorithms:
            self._algorithms[key] = await self.decoders.run(Algorithm.of, served.engine)
        return self._algorithms[key]
