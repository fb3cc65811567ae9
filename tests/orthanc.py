"""A real Orthanc PACS with its DICOMweb plugin, on a free loopback port, for tests; and DICOM
X-rays made from the shipped sample images to store into it."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from benchmarks.payloads import make_dicom
from tests.server_process import free_port

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "radiology", "s3cret-pw"


class Orthanc:
    """`Orthanc config.json` with its storage in `folder`, basic auth (USER, PASSWORD), no DICOM
    port, the DICOMweb plugin at /dicom-web; ready once /system answers."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Orthanc:
        missing = [n for n in ("Orthanc", "dciodvfy") if shutil.which(n) is None]
        if missing or not PLUGIN.is_file():
            pytest.fail(f"{', '.join(missing) or PLUGIN} missing: run `make pacs` (root)")
        config: dict[str, object] = {
            "Name": "pneumo-test",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
        with (self.folder / "orthanc.log").open("wb") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                ["Orthanc", str(self.folder / "orthanc.json")], stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                if self.rest("GET", "/system").status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        pytest.fail("Orthanc did not answer within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rest(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        """Orthanc's own REST API (not DICOMweb): what the tests set up and look at with."""
        return httpx.request(  # type: ignore[arg-type]
            method, self.url + path, auth=(USER, PASSWORD), timeout=30, **kwargs
        )

    def store(self, data: bytes) -> None:
        answer = self.rest("POST", "/instances", content=data)
        assert answer.status_code == 200, answer.text

    def instances_of(self, study_uid: str, modality: str) -> list[bytes]:
        """The files of every instance of `modality` in a study, as stored."""
        found = self.rest(
            "POST",
            "/tools/find",
            json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
        ).json()
        files = [self.rest("GET", f"/instances/{i['ID']}/file").content for i in found]
        return [f for f in files if _modality(f) == modality]


class TlsFront:
    """HTTPS on a free loopback port in front of a plain-HTTP server, with a self-signed
    certificate (`cert`, its own CA), as a hospital's reverse proxy fronts its PACS. Orthanc's
    own HTTPS (1.10, Debian) resets every connection, so the tests terminate TLS here."""

    def __init__(self, folder: Path, backend_port: int) -> None:
        self.cert, key = folder / "cert.pem", folder / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(self.cert)],
            check=True,
            capture_output=True,
        )  # fmt: skip
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(self.cert, key)
        self.backend_port = backend_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            secure = self.context.wrap_socket(client, server_side=True)
        except (OSError, ssl.SSLError):  # the client did not trust us: what the test expects
            client.close()
            return
        backend = socket.create_connection(("127.0.0.1", self.backend_port))
        threading.Thread(target=_pipe, args=(backend, secure), daemon=True).start()
        _pipe(secure, backend)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass  # the other side closed: so does this one
    finally:
        for s in (source, sink):
            s.close()


def _modality(data: bytes) -> str:
    import io

    import pydicom

    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).Modality)


@dataclass(frozen=True)
class Instance:
    path: Path  # the .dcm file, also scored locally for comparison
    study: str
    series: str
    sop: str
    frontal_chest: bool


def xray_instance(
    jpeg: Path,
    folder: Path,
    study: str,
    patient: str,
    modality: str = "DX",
    body_part: str = "CHEST",
    view: str = "PA",
) -> Instance:
    """A DX/CR image of a sample X-ray's pixels (8 bits stored in 16), with the patient, study
    and series attributes a PACS files it under."""
    from pydicom.uid import generate_uid

    pixels = np.asarray(Image.open(jpeg).convert("L"), dtype=np.uint16)
    series, sop = generate_uid(), generate_uid()
    data = make_dicom(
        pixels,
        bits=8,
        Modality=modality,
        BodyPartExamined=body_part,
        ViewPosition=view,
        StudyInstanceUID=study,
        SeriesInstanceUID=series,
        SOPInstanceUID=sop,
        PatientName=f"Test^{patient}",
        PatientID=patient,
        PatientBirthDate="19700101",
        PatientSex="O",
        StudyDate="20240115",
        StudyTime="101500",
        StudyID="1",
        AccessionNumber=f"A{patient}",
        ReferringPhysicianName="",
        SeriesNumber=1,
        InstanceNumber=1,
        PatientOrientation=["A", "F"] if view == "PA" else ["P", "F"],
        ImageType=["ORIGINAL", "PRIMARY"],
        PresentationIntentType="FOR PRESENTATION",
    )
    path = folder / f"{jpeg.stem}-{view.lower()}-{body_part.lower()}.dcm"
    path.write_bytes(data)
    frontal = modality in ("DX", "CR") and body_part == "CHEST" and view in ("PA", "AP")
    return Instance(path, study, series, sop, frontal)


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dicom3tools' IOD checker prints for a file (warnings are not errors)."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def sr_items(ds: object) -> list[tuple[str, object]]:
    """Every content item of an SR, depth first: (concept name's meaning, its value: a coded
    value's meaning, a number, a text or the referenced SOPInstanceUID)."""
    items: list[tuple[str, object]] = []
    for item in getattr(ds, "ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        kind = item.ValueType
        if kind == "CODE":
            items.append((name, item.ConceptCodeSequence[0].CodeMeaning))
        elif kind == "NUM":
            items.append((name, float(item.MeasuredValueSequence[0].NumericValue)))
        elif kind == "IMAGE":
            items.append((name, item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        elif kind in ("TEXT", "UIDREF"):
            items.append((name, str(item.TextValue if kind == "TEXT" else item.UID)))
        items += sr_items(item)
    return items
