"""Measure the fast preprocessing path of the shipped default model against its reference path
and record the figures in its manifest, as `pneumo convert` records them for a new model.

    python models/training/measure_fast_path.py --images ../shared/data/fullres

The shipped version was converted before conversions measured this; without the figures the
engine's `auto` would run it on the reference path. This scores the probes `pneumo convert
--images DIR` would use (the shipped samples and every X-ray of DIR: full resolution, since
the fast path's shortcuts only act on large images) through both paths and
writes `preprocessing` into models/pneumonia/1/manifest.json, the same figures and verdict a
conversion records. Only the manifest changes: the model files and their sha256 stay as they
are. (parity_tests/test_fast_preprocessing.py checks the verdict on all of ../shared's X-rays.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pneumo_onnx import Engine
from pneumo_onnx.convert.probes import gather_images
from pneumo_onnx.engine.repository.manifest import MANIFEST_NAME, Manifest, verify_files
from pneumo_onnx.engine.repository.resolve import default_model_dir
from pneumo_onnx.engine.repository.sections import Preprocessing
from pneumo_onnx.engine.runtime.fidelity import measure, verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="full-resolution X-rays")
    args = parser.parse_args()
    engine = Engine.load(preprocessing="reference")
    version_dir = engine.model.path.parent
    assert version_dir == default_model_dir() / "1", version_dir
    images = gather_images([args.images])
    figures = measure(engine.scores, images, engine.contract)
    path, why = verdict(figures, engine.contract)
    # One section replaced in the JSON as it is, the rest kept byte for byte (a round trip
    # through Manifest would restate an old contract in today's schema); checked by the reader.
    manifest_path = version_dir / MANIFEST_NAME
    data = json.loads(manifest_path.read_text())
    data["preprocessing"] = Preprocessing(figures, path, why).to_dict()
    assert verify_files(version_dir, Manifest.from_dict(data)) == []
    manifest_path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"{path}: {why}")
    print(json.dumps(figures.to_dict(), indent=2))


if __name__ == "__main__":
    main()
