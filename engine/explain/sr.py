"""The DICOM Structured Report of one scored X-ray (highdicom, the `dicomweb` extra).

A Comprehensive SR holding a TID 1500 Measurement Report in the image's own study: one
measurement group that references the source image and holds the finding (SNOMED CT
233604007 "Pneumonia", Present or Absent), P(PNEUMONIA) and the decision threshold, and the
algorithm that ran (model name, version, variant and the sha256 of the file), whose device UID
the file's sha256 gives (`stable_uid`). It is marked as
research use: preliminary, unverified, and said so in its series description and algorithm
parameters. The source's header is read like its pixels: in the decode sandbox when given one.
"""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pneumo_onnx import __version__
from pneumo_onnx.engine.errors import MissingExtraError
from pneumo_onnx.engine.repository.manifest import sha256_file
from pneumo_onnx.engine.runtime.dicom import dicom_dataset
from pneumo_onnx.engine.runtime.results import Scored

if TYPE_CHECKING:
    from pneumo_onnx.engine.runtime.engine import Engine
    from pneumo_onnx.engine.runtime.sandbox import Sandbox, TaskContext

RESEARCH_ONLY = "RESEARCH USE ONLY - NOT FOR DIAGNOSTIC USE"
SERIES_DESCRIPTION = "pneumo-onnx AI result, research use only, not for diagnosis"
# A coding scheme of our own (PS3.16 8.2: designators starting "99" are local): DICOM has no
# code for one model's probability of a finding, nor for the threshold it was decided with.
LOCAL_SCHEME = "99PNEUMOONNX"
# What the SR copies from its source image: the patient and study it belongs to, and what it
# references. Nothing else of an untrusted header crosses back from the sandbox.
COPIED = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID",
    "Modality", "SpecificCharacterSet", "Rows", "Columns", "SamplesPerPixel",
    "PixelRepresentation", "NumberOfFrames",
)  # fmt: skip


@dataclass(frozen=True)
class Algorithm:
    """The model that scored: what the SR names as its algorithm."""

    name: str
    version: str
    variant: str
    sha256: str
    positive_label: str
    preprocessing: str  # the path its images took ('fast' or 'reference')

    @classmethod
    def of(cls, engine: Engine) -> Algorithm:
        model = engine.model
        return cls(
            name=model.name or model.path.stem,
            version=str(model.version) if model.version is not None else "unversioned",
            variant=model.variant,
            sha256=sha256_file(model.path),
            positive_label=engine.contract.positive_label,
            preprocessing=engine.preprocessing,
        )

    def report_uids(self, study: str, source: str, threshold: float) -> tuple[str, str]:
        """The (series, SOP instance) UIDs of its SR of image `source` in `study`: one series
        per study and model; one SR per image, model, preprocessing and threshold. The same
        each time they are made (`stable_uid`): an SR made again is the same object."""
        model = (self.sha256, self.variant)
        series = stable_uid("sr-series", study, *model)
        if not source:  # an image without a UID of its own: its report gets a new one
            return series, f"2.25.{uuid.uuid4().int}"
        return series, stable_uid("sr", source, *model, self.preprocessing, repr(threshold))


def stable_uid(*parts: str) -> str:
    """The DICOM UID these parts always give: 2.25 and the name-based UUID of them. What is
    made again from the same parts (the SR of an image that a resumed run stores again, the
    device that made it) is then the same object to a PACS, not a copy of it."""
    name = "pneumo-onnx:" + "|".join(parts)
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}"


def source_header(data: bytes, name: str, sandbox: Sandbox | None = None) -> Any:
    """The attributes of the source image an SR needs, as a pydicom Dataset; parsed in
    `sandbox` when given (bytes from a server), else here (a file the user named)."""
    from pydicom import Dataset

    if sandbox is None:
        attributes = header_task(None, data, name)
    else:
        attributes = sandbox.call(header_task, data, name, name=name, input_bytes=len(data))
    return Dataset.from_json(attributes)


def header_task(ctx: TaskContext | None, data: bytes, name: str) -> dict[str, Any]:
    """In the worker: the COPIED attributes as DICOM JSON (builtins only cross back)."""
    from pydicom import Dataset

    ds = dicom_dataset(data, name)
    kept = Dataset()
    for keyword in COPIED:
        if keyword in ds:
            setattr(kept, keyword, ds[keyword].value)
    return dict(json.loads(kept.to_json()))  # plain str, not pydicom's UID and PersonName


def require_highdicom() -> None:
    """Fail before any scoring when reports are asked for and highdicom is missing."""
    try:
        import highdicom  # noqa: F401
    except ImportError as e:
        raise MissingExtraError("dicomweb", "writing a Structured Report", "highdicom") from e


def build_sr(
    source: Any,
    result: Scored,
    algorithm: Algorithm,
    series_uid: str,
    sop_uid: str,
    instance_number: int,
) -> bytes:
    """The SR of `result` for image `source` (a header Dataset), as a DICOM file."""
    require_highdicom()
    import highdicom as hd
    from pydicom import Dataset
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    finding = hd.sr.QualitativeEvaluation(
        name=hd.sr.CodedConcept("233604007", "SCT", "Pneumonia"),
        value=(
            hd.sr.CodedConcept("52101004", "SCT", "Present")
            if result["prediction"] == algorithm.positive_label
            else hd.sr.CodedConcept("2667000", "SCT", "Absent")
        ),
    )
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=f"pneumo-onnx {algorithm.name}",
        version=f"{algorithm.version} ({algorithm.variant})",
        parameters=[
            f"sha256={algorithm.sha256}",
            f"threshold={result['threshold']:g}",
            f"pneumo-onnx {__version__}",
            RESEARCH_ONLY,
        ],
    )
    unitless = hd.sr.CodedConcept("1", "UCUM", "no units")
    measurements = [
        hd.sr.Measurement(
            name=hd.sr.CodedConcept("P-PNEUMONIA", LOCAL_SCHEME, "Probability of pneumonia"),
            value=round(result["raw_score"], 6),
            unit=unitless,
            algorithm_id=algorithm_id,
        ),
        hd.sr.Measurement(
            name=hd.sr.CodedConcept("THRESHOLD", LOCAL_SCHEME, "Decision threshold"),
            value=result["threshold"],
            unit=unitless,
        ),
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="pneumonia"),
        algorithm_id=algorithm_id,
        finding_sites=[hd.sr.FindingSite(hd.sr.CodedConcept("39607008", "SCT", "Lung"))],
        measurements=measurements,
        qualitative_evaluations=[finding],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=stable_uid("device", algorithm.sha256),
            name=f"pneumo-onnx {algorithm.name}",
            manufacturer_name="pneumo-onnx",
            model_name=f"{algorithm.name} {algorithm.version}",
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray"),
        imaging_measurements=[group],
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=series_uid,
        series_number=9000,  # after the modality's own series
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer="pneumo-onnx",
        is_complete=True,
        is_final=False,  # PRELIMINARY: a model's output, not a report
        is_verified=False,
        series_description=SERIES_DESCRIPTION,
    )
    # The local coding scheme is named where a receiver looks it up: the SOP Common module.
    scheme = Dataset()
    scheme.CodingSchemeDesignator = LOCAL_SCHEME
    scheme.CodingSchemeName = "pneumo-onnx model outputs"
    scheme.CodingSchemeResponsibleOrganization = "pneumo-onnx"
    sr.CodingSchemeIdentificationSequence = [scheme]
    buf = io.BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
