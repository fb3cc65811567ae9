"""A wrong contract never passes silently when labelled X-rays are given: `pneumo convert` and
`pneumo validate` score `--images` folders holding NORMAL/ and PNEUMONIA/ through the engine and
fail below ROC AUC 0.5, naming the label order or input scaling that scores clearly better.

The model is the trained reference (models/pneumonia_cnn.keras, one sigmoid unit), and the same
network with a 2-unit softmax head that gives exactly [1 - p, p] (the issue's case: a softmax
model converted with the label order the wrong way round). The labelled images are the shipped
samples (engine/samples: 3 NORMAL, 3 PNEUMONIA, in the train split: a sanity check, not an
accuracy figure).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from pneumo_onnx.engine.cli import main
from pneumo_onnx.engine.repository.manifest import read_manifest
from pneumo_onnx.engine.runtime.samples import SAMPLES_DIR

MODELS = Path(__file__).resolve().parents[1] / "models"
TRAINED = MODELS / "pneumonia_cnn.keras"
LABELLED = str(SAMPLES_DIR)


@pytest.fixture(scope="module")
def softmax2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained network with a softmax head: softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)],
    unit 1 is P(PNEUMONIA)."""
    trained = keras.saving.load_model(TRAINED, compile=False)
    last = trained.layers[-1]
    kernel, bias = last.get_weights()
    head = keras.layers.Dense(2, activation="softmax", name="softmax_head")
    outputs = head(last.input)
    head.set_weights(
        [np.concatenate([np.zeros_like(kernel), kernel], 1), np.concatenate([[0.0], bias])]
    )
    path = tmp_path_factory.mktemp("softmax2") / "softmax2.keras"
    keras.Model(trained.inputs, outputs).save(path)
    return path


def convert(source: Path | str, repo: Path, *flags: str) -> int:
    return main(["convert", str(source), "-o", str(repo), "--variants", "none", *flags])


@pytest.mark.parametrize("kind", ["sigmoid", "softmax2"])
def test_wrong_label_order_fails_convert(kind: str, softmax2: Path, tmp_path: Path, capsys) -> None:
    source = TRAINED if kind == "sigmoid" else softmax2
    repo = tmp_path / "repo"
    assert convert(source, repo, "--labels", "PNEUMONIA,NORMAL", "--images", LABELLED) == 1
    err = capsys.readouterr().err
    assert "  - labelled_auc: labels look inverted: ROC AUC 0.000 on 6 labelled images (3 " in err
    assert err.endswith(
        "with the labels the other way round it would be 1.000: did you mean "
        "--labels NORMAL,PNEUMONIA?\n"
    ), err
    assert not repo.exists()


def test_right_label_order_passes_and_is_recorded(softmax2: Path, tmp_path: Path, capsys) -> None:
    repo = tmp_path / "repo"
    assert convert(softmax2, repo, "--labels", "NORMAL,PNEUMONIA", "--images", LABELLED) == 0
    assert (
        "PASS  labelled_auc: ROC AUC 1.000 on 6 labelled images (3 NORMAL, 3 PNEUMONIA; reference "
        "preprocessing, as the engine runs it); sensitivity 1.000, specificity 1.000 at 0.5\n"
    ) in capsys.readouterr().out
    labelled = read_manifest(repo / "pneumonia" / "1").labelled
    assert labelled is not None and labelled["roc_auc"] == 1.0 and labelled["images"] == 6


def test_wrong_input_scaling_is_named(tmp_path: Path, capsys) -> None:
    """[-1, 1] fed to a model trained on [0, 1]: the classes come out the wrong way round,
    and it is the scaling, not the labels, that says so."""
    repo = tmp_path / "repo"
    assert convert(TRAINED, repo, "--input-scaling", "symmetric", "--images", LABELLED) == 1
    err = capsys.readouterr().err
    assert "  - labelled_auc: input scaling looks wrong: ROC AUC " in err
    assert "did you mean --input-scaling unit?\n" in err and "--labels" not in err


def test_validate_catches_a_model_converted_with_the_wrong_labels(tmp_path: Path, capsys) -> None:
    """Without labelled images the conversion cannot know; `pneumo validate` with them does."""
    repo = tmp_path / "repo"
    assert convert(TRAINED, repo, "--labels", "PNEUMONIA,NORMAL") == 0
    model = repo / "pneumonia" / "1" / "model.onnx"
    capsys.readouterr()
    assert main(["validate", str(model), "--images", LABELLED]) == 1
    out = capsys.readouterr().out
    assert "FAIL  labelled_auc: labels look inverted: ROC AUC 0.000 on 6 labelled images" in out
    assert "did you mean --labels NORMAL,PNEUMONIA?" in out
    assert main(["validate", str(model), "--images", LABELLED, "--min-auc", "0.9"]) == 1
