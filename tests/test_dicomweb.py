"""`pneumo batch --dicomweb` against a real Orthanc PACS (tests/orthanc.py): search, fetch,
score like local files, skip what is not a frontal chest X-ray, store SRs, resume, refuse."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.cli.dicomweb import PASSWORD_ENV, TOKEN_ENV
from pneumo_onnx.engine.errors import ImageError
from pneumo_onnx.engine.offline.dicomweb.client import Client, Found
from pneumo_onnx.engine.offline.dicomweb.views import incomplete, skip_reason
from pneumo_onnx.engine.repository.manifest import sha256_file
from pneumo_onnx.engine.runtime.engine import Engine
from tests.orthanc import (
    PASSWORD,
    USER,
    Instance,
    Orthanc,
    TlsFront,
    dciodvfy_errors,
    sr_items,
    xray_instance,
)


@dataclass
class Pacs:
    orthanc: Orthanc
    instances: list[Instance]
    studies: tuple[str, str]
    stored: Path  # the results of the first run, with --store-sr
    exit_code: int
    output: str


def batch(pacs: Orthanc, out: Path, *args: str) -> int:
    return main(
        ["batch", "--dicomweb", pacs.dicomweb, "--dicomweb-user", USER, "-o", str(out), *args]
    )


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, samples: list[Path]) -> Iterator[Pacs]:
    """Orthanc holding two studies: four frontal chest X-rays (DX PA, CR AP), a lateral and a
    hand; then one `--store-sr` run over all of it."""
    folder = tmp_path_factory.mktemp("pacs")
    orthanc = Orthanc(folder).start()
    try:
        files = folder / "files"
        files.mkdir()
        a, b = generate_uid(), generate_uid()
        normal = [s for s in samples if s.parent.name == "NORMAL"]
        pneumonia = [s for s in samples if s.parent.name == "PNEUMONIA"]
        instances = [
            xray_instance(normal[0], files, a, "P1"),
            xray_instance(pneumonia[0], files, a, "P1", modality="CR", view="AP"),
            xray_instance(normal[1], files, a, "P1", view="LL"),
            xray_instance(pneumonia[1], files, b, "P2"),
            xray_instance(normal[2], files, b, "P2", view="AP"),
            xray_instance(pneumonia[2], files, b, "P2", body_part="HAND"),
        ]
        for instance in instances:
            orthanc.store(instance.path.read_bytes())
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(PASSWORD_ENV, PASSWORD)
            stdout = io.StringIO()
            mp.setattr("sys.stdout", stdout)
            code = batch(orthanc, folder / "results.csv", "--store-sr")
            mp.undo()  # stdout back; the password stays set for the module's tests
            mp.setenv(PASSWORD_ENV, PASSWORD)
            yield Pacs(orthanc, instances, (a, b), folder / "results.csv", code, stdout.getvalue())
    finally:
        orthanc.stop()


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def local_scores(paths: list[Path], capsys: pytest.CaptureFixture[str]) -> dict[str, float]:
    """What `pneumo predict --json` gives for the same DICOM files, by file name."""
    capsys.readouterr()
    assert main(["predict", *map(str, paths), "--json"]) == 0
    return {Path(r["image_path"]).name: r["raw_score"] for r in json.loads(capsys.readouterr().out)}


def test_scores_every_frontal_chest_xray_as_predict_does(
    pacs: Pacs, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pacs.exit_code == 0, pacs.output
    assert "found 6 instances" in pacs.output and "4 SRs stored" in pacs.output
    by_sop = {r["sop_instance_uid"]: r for r in rows(pacs.stored)}
    assert set(by_sop) == {i.sop for i in pacs.instances}
    local = local_scores([i.path for i in pacs.instances if i.frontal_chest], capsys)
    for instance in pacs.instances:
        row = by_sop[instance.sop]
        assert (row["study_instance_uid"], row["series_instance_uid"]) == (
            instance.study,
            instance.series,
        )
        assert row["image_path"].endswith(f"/instances/{instance.sop}")
        if instance.frontal_chest:
            assert row["skipped"] == "" and row["error"] == ""
            assert float(row["raw_score"]) == pytest.approx(local[instance.path.name], abs=1e-6)
            assert row["prediction"] in ("NORMAL", "PNEUMONIA") and row["sr_sop_instance_uid"]
        else:
            assert row["prediction"] == "" and row["sr_sop_instance_uid"] == ""
            assert row["skipped"].startswith("not a frontal chest radiograph: ")
    reasons = sorted(r["skipped"].split(": ")[1] for r in by_sop.values() if r["skipped"])
    assert reasons == [
        "BodyPartExamined is HAND, expected CHEST (--any-view scores it anyway)",
        "ViewPosition is LL, expected PA or AP (--any-view scores it anyway)",
    ]


def test_the_pacs_holds_one_valid_sr_per_scored_image_in_its_study(
    pacs: Pacs, tmp_path: Path
) -> None:
    by_sop = {r["sop_instance_uid"]: r for r in rows(pacs.stored)}
    model = Engine.load().model
    for study in pacs.studies:
        scored = [i for i in pacs.instances if i.study == study and i.frontal_chest]
        reports = pacs.orthanc.instances_of(study, "SR")
        assert len(reports) == len(scored) == 2
        series = set()
        for data in reports:
            path = tmp_path / "sr.dcm"
            path.write_bytes(data)
            assert dciodvfy_errors(path) == []
            sr = pydicom.dcmread(io.BytesIO(data))
            series.add(sr.SeriesInstanceUID)
            items = dict(sr_items(sr))
            source = items["Source of Measurement"]
            row = by_sop[str(source)]
            assert sr.SOPInstanceUID == row["sr_sop_instance_uid"]
            assert (
                sr.StudyInstanceUID == study
                and sr.PatientID == ("P1", "P2")[pacs.studies.index(study)]
            )
            assert items["Pneumonia"] == (
                "Present" if row["prediction"] == "PNEUMONIA" else "Absent"
            )
            assert items["Probability of pneumonia"] == pytest.approx(
                float(row["raw_score"]), abs=1e-6
            )
            assert items["Decision threshold"] == pytest.approx(float(row["threshold"]))
            assert items["Algorithm Name"] == "pneumo-onnx pneumonia"
            assert items["Algorithm Version"] == f"{model.version} (fp32)"
            parameters = [v for k, v in sr_items(sr) if k == "Algorithm Parameters"]
            assert f"sha256={sha256_file(model.path)}" in parameters
            assert "RESEARCH USE ONLY - NOT FOR DIAGNOSTIC USE" in parameters
            assert "research use only" in sr.SeriesDescription
            assert (sr.PreliminaryFlag, sr.VerificationFlag) == ("PRELIMINARY", "UNVERIFIED")
        assert len(series) == 1 and series.isdisjoint({i.series for i in scored})


def test_resume_scores_only_what_is_missing(
    pacs: Pacs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.csv"
    study = pacs.studies[1]
    assert batch(pacs.orthanc, out, "--study", study) == 0
    full = out.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("".join(full[:3]) + full[3][:40], encoding="utf-8")  # killed mid-row
    capsys.readouterr()
    assert batch(pacs.orthanc, out, "--study", study, "--resume") == 0
    assert "2 skipped (already in" in capsys.readouterr().out
    sops = [r["sop_instance_uid"] for r in rows(out)]
    assert len(sops) == len(set(sops)) == len(full) - 1
    assert sorted(out.read_text(encoding="utf-8").splitlines()) == sorted(
        line.rstrip("\r\n") for line in full
    )


def test_a_resumed_run_stores_no_report_twice(pacs: Pacs, tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    study = pacs.studies[0]
    assert batch(pacs.orthanc, out, "--study", study, "--store-sr") == 0
    stored = {r["sop_instance_uid"]: r["sr_sop_instance_uid"] for r in rows(out) if r["prediction"]}
    # Killed after storing its reports, before writing their rows: the resumed run stores
    # them again, under the same UIDs (those of the module's first run over this study too).
    header = out.read_text(encoding="utf-8").splitlines(keepends=True)[0]
    out.write_text(header, encoding="utf-8")
    assert batch(pacs.orthanc, out, "--study", study, "--store-sr", "--resume") == 0
    again = {r["sop_instance_uid"]: r["sr_sop_instance_uid"] for r in rows(out) if r["prediction"]}
    assert again == stored and len(stored) == 2 and all(stored.values())
    first = {r["sop_instance_uid"]: r["sr_sop_instance_uid"] for r in rows(pacs.stored)}
    assert all(first[sop] == sr for sop, sr in stored.items())
    reports = pacs.orthanc.instances_of(study, "SR")
    scored = [i for i in pacs.instances if i.study == study and i.frontal_chest]
    assert len(reports) == len(scored) == 2  # one per image, however many runs stored it
    assert {pydicom.dcmread(io.BytesIO(r)).SOPInstanceUID for r in reports} == set(stored.values())


def test_study_since_and_any_view(pacs: Pacs, tmp_path: Path) -> None:
    a = pacs.studies[0]
    assert batch(pacs.orthanc, tmp_path / "a.csv", "--study", a, "--any-view") == 0
    got = {r["sop_instance_uid"]: r for r in rows(tmp_path / "a.csv")}
    originals = {i.sop for i in pacs.instances if i.study == a}
    assert all(got[s]["prediction"] and not got[s]["skipped"] for s in originals)
    reports = set(got) - originals  # the SRs of the first run: never scored
    assert len(reports) == 2
    assert all(got[s]["skipped"] == "not an image: Modality is SR" for s in reports)
    assert batch(pacs.orthanc, tmp_path / "late.csv", "--since", "2030-01-01") == 0
    assert rows(tmp_path / "late.csv") == []


def test_a_wrong_password_is_a_clear_error(
    pacs: Pacs, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    assert batch(pacs.orthanc, tmp_path / "r.csv") == 2
    err = capsys.readouterr().err
    assert "refused the credentials given (HTTP 401)" in err and "Traceback" not in err
    assert "not-the-password" not in err and not (tmp_path / "r.csv").exists()
    monkeypatch.delenv(PASSWORD_ENV)
    monkeypatch.setenv(TOKEN_ENV, "abc")
    assert batch(pacs.orthanc, tmp_path / "r.csv") == 2
    assert "either a user and password or a bearer token" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dicomweb", "ftp://pacs/dicom-web"], "expected an http:// or https:// URL"),
        (["engine/samples", "--store-sr"], "--store-sr only work with --dicomweb URL"),
        ([], "name a folder to score, or a server: --dicomweb URL"),
        (["engine/samples", "--dicomweb", "http://x"], "or --dicomweb, not both"),
        (["--dicomweb", "http://u@127.0.0.1:9/x"], "a password for u is needed"),
        (["--dicomweb", "https://127.0.0.1:9", "--dicomweb-ca", "nope.pem"], "not a readable PEM"),
    ],
    ids=["scheme", "sr-without-server", "no-source", "both", "no-password", "ca"],
)
def test_bad_options_are_usage_errors(
    args: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    assert main(["batch", *args, "-o", str(tmp_path / "r.csv")]) == 2
    assert message in capsys.readouterr().err


def test_an_unreachable_server_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.server_process import free_port

    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert main(["batch", "--dicomweb", url, "-o", str(tmp_path / "r.csv")]) == 1
    assert f"cannot reach {url} to search" in capsys.readouterr().err


def test_https_with_a_ca_file(
    pacs: Pacs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    front = TlsFront(tmp_path, pacs.orthanc.port)
    try:
        url = f"{front.url}/dicom-web"
        args = ["batch", "--dicomweb", url, "--dicomweb-user", USER, "--study", pacs.studies[0]]
        assert main([*args, "-o", str(tmp_path / "untrusted.csv")]) == 1
        err = capsys.readouterr().err
        assert f"the TLS certificate of {url} is not trusted" in err
        assert "pass --dicomweb-ca FILE" in err
        assert main([*args, "-o", str(tmp_path / "r.csv"), "--dicomweb-ca", str(front.cert)]) == 0
        got = {r["sop_instance_uid"] for r in rows(tmp_path / "r.csv")}
        assert {i.sop for i in pacs.instances if i.study == pacs.studies[0]} <= got
    finally:
        front.close()


def test_metadata_fills_in_what_a_search_left_out(pacs: Pacs) -> None:
    lateral = next(i for i in pacs.instances if "-ll-" in i.path.name)
    with Client(pacs.orthanc.dicomweb, USER, PASSWORD) as client:
        found = Found(lateral.study, lateral.series, lateral.sop, {})  # a terse server's search
        assert incomplete(found.attributes)
        reason = skip_reason(client.metadata(found))
        assert reason is not None and "ViewPosition is LL" in reason
        gone = Found(lateral.study, lateral.series, generate_uid(), {})
        with pytest.raises(ImageError, match="sent no metadata"):
            client.metadata(gone)
        with pytest.raises(ImageError, match="no longer has this instance"):
            client.retrieve(gone)
        assert list(client.search([generate_uid()], None)) == []
