"""`pneumo predict IMAGE.dcm --sr OUT`: the Structured Report of a local DICOM X-ray (checked
with dciodvfy), refused for other inputs; and the multipart/related codec DICOMweb uses."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.errors import ImageError
from pneumo_onnx.engine.offline.dicomweb import multipart
from tests.orthanc import dciodvfy_errors, sr_items, xray_instance


def test_predict_writes_a_valid_sr_of_a_dicom_xray(
    samples: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = xray_instance(samples[-1], tmp_path, generate_uid(), "P9")
    out = tmp_path / "report.dcm"
    assert main(["predict", str(image.path), "--sr", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    assert dciodvfy_errors(out) == []
    sr = pydicom.dcmread(out)
    assert (sr.StudyInstanceUID, sr.PatientID, sr.Modality) == (image.study, "P9", "SR")
    assert sr.SeriesInstanceUID != image.series
    items = dict(sr_items(sr))
    assert items["Source of Measurement"] == image.sop
    assert items["Probability of pneumonia"] == pytest.approx(result["raw_score"], abs=1e-6)
    expected = "Present" if result["prediction"] == "PNEUMONIA" else "Absent"
    assert items["Pneumonia"] == expected
    [scheme] = sr.CodingSchemeIdentificationSequence  # the local codes, named
    assert (scheme.CodingSchemeDesignator, scheme.CodingSchemeResponsibleOrganization) == (
        "99PNEUMOONNX",
        "pneumo-onnx",
    )


def test_several_images_write_one_sr_each_into_a_folder(
    samples: list[Path], tmp_path: Path
) -> None:
    study = generate_uid()
    images = [xray_instance(s, tmp_path, study, "P8") for s in samples[:2]]
    out = tmp_path / "reports"
    assert main(["predict", *(str(i.path) for i in images), "--sr", str(out)]) == 0
    written = sorted(out.iterdir())
    assert [p.name for p in written] == sorted(f"{i.path.stem}.sr.dcm" for i in images)
    series = {pydicom.dcmread(p).SeriesInstanceUID for p in written}
    assert len(series) == 1  # one run, one study: one series of reports


def test_an_sr_made_again_is_the_same_object(samples: list[Path], tmp_path: Path) -> None:
    image = xray_instance(samples[0], tmp_path, generate_uid(), "P7")

    def report(threshold: str) -> pydicom.Dataset:
        out = tmp_path / f"report-{threshold}.dcm"
        assert main(["predict", str(image.path), "--sr", str(out), "--threshold", threshold]) == 0
        return pydicom.dcmread(out)

    first, again, other = report("0.5"), report("0.5"), report("0.9")
    # The same image, model and threshold: the same report UIDs, for a PACS to take as one.
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (
        again.SOPInstanceUID,
        again.SeriesInstanceUID,
    )
    # Another threshold decides anew: another report, in the same series of this model's.
    assert other.SOPInstanceUID != first.SOPInstanceUID
    assert other.SeriesInstanceUID == first.SeriesInstanceUID
    devices = {dict(sr_items(sr))["Device Observer UID"] for sr in (first, again, other)}
    assert len(devices) == 1  # the device is the model file


def test_sr_of_a_jpeg_is_refused_before_scoring(
    samples: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", str(samples[0]), "--sr", str(tmp_path / "r.dcm")]) == 2
    captured = capsys.readouterr()
    assert f"--sr needs DICOM images: {samples[0].name} is JPEG" in captured.err
    assert captured.out == "" and not (tmp_path / "r.dcm").exists()


def test_multipart_round_trip() -> None:
    parts = [b"DICM one\r\n--not-a-boundary", b"", b"two"]
    body, content_type = multipart.build(parts)
    assert [p.data for p in multipart.parse(body, content_type)] == parts
    assert {p.content_type for p in multipart.parse(body, content_type)} == {"application/dicom"}


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"--b\r\n\r\nabc", "multipart/related; boundary=b", "truncated after 0 parts"),
        (b"abc", "multipart/related; boundary=b", "holds no part"),
        (b"", "application/dicom", "expected a multipart/related answer, got 'application/dicom'"),
        (b"", 'multipart/related; type="application/dicom"', "names no boundary"),
        (b"--b\r\nContent-Type: x\r\n--b--", "multipart/related; boundary=b", "no end of headers"),
    ],
    ids=["truncated", "no-boundary-in-body", "not-multipart", "no-boundary", "no-headers-end"],
)
def test_malformed_multipart_is_a_clear_error(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(ImageError, match=message.replace("(", r"\(")):
        multipart.parse(body, content_type)
