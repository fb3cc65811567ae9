"""`POST /predict` with a DICOM X-ray and `Accept: application/dicom` answers its Structured
Report (valid per dciodvfy, in the image's study, with the score the JSON answer gives); the
prediction log records who asked and the image's UIDs, for audit."""

from __future__ import annotations

import io
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pneumo_onnx.engine.runtime.samples import sample_images
from pneumo_onnx.engine.serve.front.security import fingerprint
from tests.orthanc import Instance, dciodvfy_errors, sr_items, xray_instance
from tests.server_process import ServerProcess

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom", reason="the 'dicomweb' extra is not installed")
KEY = "audit-key-0123456789abcdef"
DICOM = "application/dicom"


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Instance:
    from pydicom.uid import generate_uid

    folder = tmp_path_factory.mktemp("dcm")
    pneumonia = next(p for p in sample_images() if p.parent.name == "PNEUMONIA")
    return xray_instance(pneumonia, folder, generate_uid(), "P1")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("sr"), "--state-dir", "state").start()
    yield srv
    assert srv.stop() == 0


def post(server: ServerProcess, path: Path, accept: str | None = None, **headers: str):
    if accept is not None:
        headers["Accept"] = accept
    return httpx.post(
        f"{server.url}/predict",
        files={"image": (path.name, path.read_bytes())},
        headers=headers,
        timeout=60,
    )


def logged(server: ServerProcess, since: float) -> list[tuple]:
    time.sleep(0.3)  # the log writer commits within 50 ms
    with sqlite3.connect(server.cwd / "state" / "predictions.db") as db:
        return db.execute(
            "SELECT caller, study_uid, series_uid, sop_uid, score FROM predictions "
            "WHERE time >= ? ORDER BY time",
            (since,),
        ).fetchall()


def test_accept_dicom_answers_a_valid_structured_report(
    server: ServerProcess, instance: Instance, tmp_path: Path
) -> None:
    scored = post(server, instance.path)
    assert scored.status_code == 200 and scored.headers["content-type"] == "application/json"
    r = post(server, instance.path, accept=f"{DICOM}, application/json;q=0.5")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == DICOM
    assert r.headers["x-model-version"] == "pneumonia/2"
    report = pydicom.dcmread(io.BytesIO(r.content))
    assert report.Modality == "SR" and report.StudyInstanceUID == instance.study
    assert report.SeriesInstanceUID != instance.series
    items = dict(sr_items(report))
    assert items["Pneumonia"] == "Present"
    assert float(items["Probability of pneumonia"]) == pytest.approx(
        scored.json()["raw_score"], abs=1e-6
    )
    out = tmp_path / "answer.sr.dcm"
    out.write_bytes(r.content)
    assert dciodvfy_errors(out) == []


def test_a_report_of_an_image_without_a_study_is_not_acceptable(server: ServerProcess) -> None:
    jpeg = sample_images()[0]
    r = post(server, jpeg, accept=DICOM)
    assert r.status_code == 406 and "needs a DICOM image" in r.json()["error"]
    assert post(server, jpeg, accept=f"{DICOM};q=0.2, application/json").status_code == 200
    r = httpx.post(
        f"{server.url}/predict?heatmap=true",
        files={"image": ("x.jpeg", jpeg.read_bytes())},
        headers={"Accept": DICOM},
    )
    assert r.status_code in (400, 406)


def test_the_log_records_the_caller_and_the_dicom_uids(
    server: ServerProcess, instance: Instance
) -> None:
    since = time.time() - 1
    assert post(server, instance.path).status_code == 200
    assert post(server, sample_images()[0]).status_code == 200
    rows = logged(server, since)
    assert rows[-2][:4] == ("address:127.0.0.1", instance.study, instance.series, instance.sop)
    assert rows[-1][:4] == ("address:127.0.0.1", None, None, None)


def test_with_keys_the_caller_is_the_key_fingerprint(tmp_path: Path, instance: Instance) -> None:
    srv = ServerProcess(tmp_path, "--state-dir", "state", env={"PNEUMO_API_KEYS": KEY}).start()
    try:
        since = time.time() - 1
        assert post(srv, instance.path, **{"X-API-Key": KEY}).status_code == 200
        (row,) = logged(srv, since)
        assert row[0] == f"key:{fingerprint(KEY)}" and KEY not in row[0]
        assert row[3] == instance.sop
    finally:
        assert srv.stop() == 0
