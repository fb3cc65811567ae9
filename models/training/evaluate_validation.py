"""Validation metrics of the shipped default model (fp32, int8, int8-full) on the fixed split.

    python models/training/evaluate_validation.py --data ../shared/data/kermany224/train

Reads models/validation_split.txt (written by v1's models/training/train.py), scores those
images with the engine exactly as `pneumo evaluate` does (reference preprocessing: the
training-time tensors), and writes models/validation_metrics.json, the source of the model
card's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from engine import Engine
from engine.offline.evaluate import evaluate_folder

MODELS = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="kermany224/train")
    parser.add_argument("--split", type=Path, default=MODELS / "validation_split.txt")
    parser.add_argument("--out", type=Path, default=MODELS / "validation_metrics.json")
    args = parser.parse_args()
    names = [line.strip() for line in args.split.read_text().splitlines() if line.strip()]
    results = {}
    with tempfile.TemporaryDirectory(prefix="pneumo-val-") as tmp:
        for name in names:  # NORMAL/x.jpeg -> tmp/NORMAL/x.jpeg, a symlink to the real file
            link = Path(tmp) / name
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink((args.data / name).resolve(), link)
        for variant in ("fp32", "int8", "int8-full"):
            for preprocessing in ("reference", "fast"):
                engine = Engine.load(variant=variant, preprocessing=preprocessing)
                evaluation = evaluate_folder(engine, Path(tmp))
                results[f"{variant}_{preprocessing}"] = evaluation.to_dict()
                m = evaluation.metrics
                print(
                    f"{variant:9} {preprocessing:9}: AUC {m['roc_auc']:.4f}  Brier {m['brier']:.4f}"
                    f"  sens/spec@0.5 {m['at_threshold']['sensitivity']:.3f}/"
                    f"{m['at_threshold']['specificity']:.3f}  recommended "
                    f"{m['recommended_threshold']:.4f}: {m['at_recommended']['sensitivity']:.3f}/"
                    f"{m['at_recommended']['specificity']:.3f}"
                )
    for metrics in results.values():
        metrics["model"] = Path(metrics["model"]).name
    args.out.write_text(json.dumps({"split": args.split.name, **results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
