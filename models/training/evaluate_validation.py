"""Validation metrics of a shipped model version (fp32, int8, int8-full, fp16; reference and
fast preprocessing) on its fixed validation split.

    python models/training/evaluate_validation.py --data ../shared/data/kermany224/train \
        --version 2     # models/validation_split_v2.txt -> models/validation_metrics_v2.json
    python models/training/evaluate_validation.py --data ../shared/data/kermany224/train \
        --version 1     # models/validation_split.txt -> models/validation_metrics.json

Scores the split's images with the engine exactly as `pneumo evaluate` does, at the version's
stored threshold, and writes the JSON the model card's figures come from.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from pneumo_onnx import Engine
from pneumo_onnx.engine.offline.evaluate import evaluate_folder
from pneumo_onnx.engine.repository.resolve import default_model_dir

MODELS = Path(__file__).resolve().parents[1]
# Each version's validation split and figures (v1: a split over images; v2: over patients).
SPLITS = {1: "validation_split.txt", 2: "validation_split_v2.txt"}
FIGURES = {1: "validation_metrics.json", 2: "validation_metrics_v2.json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="kermany224/train")
    parser.add_argument("--version", type=int, choices=sorted(SPLITS), default=max(SPLITS))
    parser.add_argument("--split", type=Path, default=None, help="default: the version's")
    parser.add_argument("--out", type=Path, default=None, help="default: the version's")
    args = parser.parse_args()
    args.split = args.split or MODELS / SPLITS[args.version]
    args.out = args.out or MODELS / FIGURES[args.version]
    version_dir = default_model_dir() / str(args.version)
    names = [line.strip() for line in args.split.read_text().splitlines() if line.strip()]
    results = {}
    with tempfile.TemporaryDirectory(prefix="pneumo-val-") as tmp:
        for name in names:  # NORMAL/x.jpeg -> tmp/NORMAL/x.jpeg, a symlink to the real file
            link = Path(tmp) / name
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink((args.data / name).resolve(), link)
        for variant in ("fp32", "int8", "int8-full", "fp16"):
            for preprocessing in ("reference", "fast"):
                engine = Engine.load(version_dir, variant=variant, preprocessing=preprocessing)
                evaluation = evaluate_folder(engine, Path(tmp))
                results[f"{variant}_{preprocessing}"] = evaluation.to_dict()
                m = evaluation.metrics
                print(
                    f"{variant:9} {preprocessing:9}: AUC {m['roc_auc']:.4f}  Brier {m['brier']:.4f}"
                    f"  sens/spec@{m['at_threshold']['threshold']:.4f} "
                    f"{m['at_threshold']['sensitivity']:.3f}/"
                    f"{m['at_threshold']['specificity']:.3f}  recommended "
                    f"{m['recommended_threshold']:.4f}: {m['at_recommended']['sensitivity']:.3f}/"
                    f"{m['at_recommended']['specificity']:.3f}"
                )
    for metrics in results.values():
        metrics["model"] = Path(metrics["model"]).name
    summary = {"version": args.version, "split": args.split.name, **results}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
