"""`pneumo predict IMAGE.dcm --sr OUT`: the Structured Reports of local DICOM files, written
to disk (one image: OUT is the file; several: OUT is a folder of IMAGE.sr.dcm)."""

from __future__ import annotations

from pathlib import Path

from pneumo_onnx.engine.errors import FileAccessError, UsageError
from pneumo_onnx.engine.explain.sr import (
    Algorithm,
    build_sr,
    require_highdicom,
    source_header,
)
from pneumo_onnx.engine.runtime.decoders import format_of, read_bytes
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.results import Scored


def check_sr_inputs(images: list[str]) -> None:
    """Refuse, before scoring, what cannot have an SR: only a DICOM image belongs to a study."""
    require_highdicom()
    for image in images:
        try:
            with open(image, "rb") as f:
                head = f.read(132)
        except OSError:
            continue  # scoring says what is wrong with it, as without --sr
        found = format_of(head, image)
        if found is None or found.name != "DICOM":
            kind = found.name if found is not None else "not a DICOM file"
            raise UsageError(
                f"--sr needs DICOM images: {Path(image).name} is {kind} (a report is filed in "
                "the image's study, and only a DICOM image has one)"
            )


def write_sr_files(engine: Engine, scored: list[tuple[str, Scored]], target: Path) -> list[Path]:
    """One SR per scored image, a series per study (their UIDs: `Algorithm.report_uids`)."""
    algorithm = Algorithm.of(engine)
    if len(scored) > 1:
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FileAccessError("create", target, e) from e
    written = []
    for number, (image, result) in enumerate(scored, 1):
        name = Path(image).name
        header = source_header(read_bytes(image, name), name)
        study, source = (str(header.get(k, "")) for k in ("StudyInstanceUID", "SOPInstanceUID"))
        series, uid = algorithm.report_uids(study, source, result["threshold"])
        data = build_sr(header, result, algorithm, series, uid, number)
        path = target if len(scored) == 1 else target / f"{Path(image).stem}.sr.dcm"
        try:
            path.write_bytes(data)
        except OSError as e:
            raise FileAccessError("write", path, e) from e
        written.append(path)
    return written
