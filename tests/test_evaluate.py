"""`pneumo evaluate` says when its figures cannot choose a threshold (too few images, the model's
own training images) and then recommends none, in text, JSON and plots; training lists are
written by `pneumo convert --training-list` (convert.repository) and read back by the engine."""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from pneumo_onnx.convert.repository import read_training_list, write_version
from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.contract import Contract, InputSpec
from pneumo_onnx.engine.errors import RepositoryError, UsageError
from pneumo_onnx.engine.explain.plots import PLOTS
from pneumo_onnx.engine.repository.manifest import (
    Manifest,
    parse_training_list,
    read_manifest,
    training_list,
)
from pneumo_onnx.engine.repository.resolve import default_model_dir
from pneumo_onnx.engine.repository.sections import TrainingImages
from pneumo_onnx.engine.runtime.samples import SAMPLES_DIR

CONTRACT = Contract(input=InputSpec(height=32, width=32))
TOO_FEW = "only 3 NORMAL and 3 PNEUMONIA images (under 50 of a class"
SEEN = "6 of 6 images are listed as this model's training images"


def labelled(root: Path, per_class: int = 50) -> Path:
    """`per_class` flat grey PNGs per class; the tiny model scores sigmoid(4 (v/255 - 0.5))."""
    for label, low in (("NORMAL", 0), ("PNEUMONIA", 125)):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            value = low + round(i * 130 / per_class)  # the classes overlap a little
            Image.new("L", (40, 40), value).save(root / label / f"{label[0]}{i:03d}.png")
    return root


def version_with_list(tmp_path: Path, write_model, names: list[str]) -> Path:
    """A repository version holding the tiny model and a gzipped training list."""
    data = gzip.compress("".join(f"{n}\n" for n in names).encode(), mtime=0)
    files = {
        "model.onnx": write_model(contract=CONTRACT).read_bytes(),
        "training_images.txt.gz": data,
    }
    info = {"model.onnx": {"kind": "fp32"}, "training_images.txt.gz": {"kind": "training list"}}
    manifest = Manifest(training_images=TrainingImages("training_images.txt.gz", len(names)))
    return write_version(tmp_path / "repo", "tiny", 1, files, info, manifest, CONTRACT)[0]


def test_evaluate_on_the_samples_says_why_there_is_no_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shipped samples are 6 training images of shipped version 1: both reasons (too few,
    and the model's own training data), in text, JSON and on every plot."""
    out, plots = tmp_path / "m.json", tmp_path / "plots"
    v1 = str(default_model_dir() / "1")
    args = ["evaluate", str(SAMPLES_DIR), "--json", str(out), "--plots", str(plots)]
    assert main([*args, "--model", v1, "--threads", "2"]) == 0
    text = capsys.readouterr().out
    assert f"note: {TOO_FEW}" in text and f"note: {SEEN}" in text
    assert "no recommended threshold (see the notes above)" in text
    assert "sensitivity >= 0.95" not in text and text.count("threshold 0.5000:") == 1
    metrics = json.loads(out.read_text())
    assert metrics["recommended_threshold"] is None and metrics["at_recommended"] is None
    assert metrics["training_images"] == {"listed": 4434, "evaluated": 6, "matched": 6}
    too_few, seen = metrics["caveats"]
    assert too_few.startswith(TOO_FEW) and seen.startswith(SEEN)
    for name in PLOTS:
        with Image.open(plots / f"{name}.png") as png:
            note = png.text["Description"]
        assert note.startswith("No recommended threshold: ") and TOO_FEW in note and SEEN in note


def test_evaluate_on_the_samples_with_the_default_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make demo`'s case: version 2 kept the samples' patients on its validation side, so
    they are not its training images; 3 per class are still too few to recommend anything."""
    out = tmp_path / "m.json"
    assert main(["evaluate", str(SAMPLES_DIR), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"note: {TOO_FEW}" in text and f"note: {SEEN}" not in text
    assert "none of these images is among the 4172 training images this model lists" in text
    metrics = json.loads(out.read_text())
    assert metrics["recommended_threshold"] is None
    assert metrics["training_images"] == {"listed": 4172, "evaluated": 6, "matched": 0}
    assert [c[: len(TOO_FEW)] for c in metrics["caveats"]] == [TOO_FEW]


def test_evaluate_recommends_on_enough_unseen_images(
    tmp_path: Path, write_model, capsys: pytest.CaptureFixture[str]
) -> None:
    root = labelled(tmp_path / "data")
    out = tmp_path / "m.json"
    assert (
        main(
            [
                "evaluate",
                str(root),
                "--model",
                str(write_model(contract=CONTRACT)),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "note:" not in text and "(highest threshold with sensitivity >= 0.95)" in text
    metrics = json.loads(out.read_text())
    assert metrics["caveats"] == [] and metrics["training_images"] is None  # a bare .onnx file
    assert metrics["at_recommended"]["sensitivity"] >= 0.95
    assert 0.1 < metrics["recommended_threshold"] < 0.6


def test_training_images_are_matched_by_file_name(
    tmp_path: Path, write_model, capsys: pytest.CaptureFixture[str]
) -> None:
    root = labelled(tmp_path / "data")
    listed = ["NORMAL/N007.png", "train/PNEUMONIA/P031.png", "NORMAL/unrelated.jpeg"]
    version = version_with_list(tmp_path, write_model, listed)
    out = tmp_path / "m.json"
    assert main(["evaluate", str(root), "--model", str(version), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "note: 2 of 100 images are listed as this model's training images" in text
    metrics = json.loads(out.read_text())
    assert metrics["training_images"] == {"listed": 3, "evaluated": 100, "matched": 2}
    assert metrics["recommended_threshold"] is None

    other = version_with_list(tmp_path / "b", write_model, ["NORMAL/IM-0115-0001.jpeg"])
    assert main(["evaluate", str(root), "--model", str(other)]) == 0
    text = capsys.readouterr().out
    assert "none of these images is among the 1 training images this model lists" in text
    assert "note:" not in text and "sensitivity >= 0.95)" in text


def test_the_shipped_model_lists_its_training_images() -> None:
    from pneumo_onnx.engine.repository.resolve import default_model_dir

    version = default_model_dir() / "1"
    names = training_list(version, read_manifest(version))
    assert names is not None and len(names) == 4434 and names == sorted(names)
    held_out = (Path(__file__).parents[1] / "models" / "validation_split.txt").read_text().split()
    assert not set(names) & set(held_out)
    assert sum(n.startswith("NORMAL/") for n in names) == 1140  # the model card's 1140 / 3294


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "missing",
            "manifest.json names a training list 'training_images.txt.gz' that is not there",
        ),
        ("tampered", "training_images.txt.gz does not match the sha256 in its manifest.json"),
        ("renamed", "manifest.json names a training list '../notes.txt' that is not there"),
    ],
)
def test_broken_training_lists_are_refused(
    tmp_path: Path, write_model, change: str, message: str
) -> None:
    version = version_with_list(tmp_path, write_model, ["NORMAL/a.png"])
    manifest = read_manifest(version)
    if change == "missing":
        (version / "training_images.txt.gz").unlink()
    elif change == "tampered":
        (version / "training_images.txt.gz").write_bytes(gzip.compress(b"NORMAL/b.png\n"))
    else:
        manifest = replace(manifest, training_images=TrainingImages("../notes.txt", 1))
    with pytest.raises(RepositoryError) as e:
        training_list(version, manifest)
    assert e.value.message == message


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("list.txt.gz", b"NORMAL/a.png\n", "training list list.txt.gz is not gzipped UTF-8 text"),
        ("list.txt", b"\xff\xfe\x00", "training list list.txt is not UTF-8 text"),
        ("list.txt", b"\n \n", "training list list.txt names no images (one name per line)"),
    ],
    ids=["not-gzip", "not-utf8", "empty"],
)
def test_bad_training_lists(name: str, data: bytes, message: str) -> None:
    with pytest.raises(RepositoryError) as e:
        parse_training_list(data, name)
    assert e.value.message.startswith(message)


def test_convert_reads_a_training_list_as_given(tmp_path: Path) -> None:
    plain = tmp_path / "names.txt"
    plain.write_text("NORMAL/a.png\n\nPNEUMONIA/b.png\n")
    assert read_training_list(plain) == ("training_images.txt", plain.read_bytes(), 2)
    packed = tmp_path / "names.txt.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    name, data, count = read_training_list(packed)
    assert (name, count) == ("training_images.txt.gz", 2)
    assert hashlib.sha256(data).digest() == hashlib.sha256(packed.read_bytes()).digest()
    with pytest.raises(UsageError, match=r"--training-list .*nowhere\.txt: No such file"):
        read_training_list(tmp_path / "nowhere.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UsageError, match=r"--training-list: training list empty\.txt names no"):
        read_training_list(tmp_path / "empty.txt")
