"""Train PneumoniaCNN v2 on Kermany et al.'s chest X-rays (a developer tool, never CI).

    # 1. patient-grouped 5-fold cross-validation (74 min on the shared 2-core machine); fold 0
    #    is the final validation split, so its run is the final model (build/model-v2/fold-0.keras):
    python models/training/train.py cv --data ../shared/data/kermany224/train \\
        --fullres ../shared/data/fullres
    # 2. the final model, its validation split and the report, from those runs (about 1 min):
    python models/training/train.py report --data ../shared/data/kermany224/train \\
        --fullres ../shared/data/fullres
    # smoke test, leaving models/ alone:
    python models/training/train.py cv --data ../shared/data/kermany224/train \\
        --fullres ../shared/data/fullres --epochs 1 --folds 0 --work /tmp/v2-smoke

Folds are whole patients (id from the file name), stratified by class, seeded; the patients of
the full-resolution subset (`--fullres`, train-split images also in `--data`) are put in fold
0, so the final validation split has a full-resolution subset. The recipe is in fit.Recipe and
augment.Augment; every fold runs it whole (crossval.run_fold). v1 was trained by commit 353b756
(models/training/train.py there; random split over images, 18 epochs, no calibration).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make `engine` and `models` importable
    sys.path.insert(0, str(REPO))

from models.training.crossval import TARGET_SENSITIVITY  # noqa: E402
from models.training.data import (  # noqa: E402
    Item,
    cached_pixels,
    grouped_folds,
    list_items,
    patient_id,
    split_counts,
)
from pneumo_onnx.engine.contract import Contract  # noqa: E402
from pneumo_onnx.engine.runtime.listing import list_images  # noqa: E402
from pneumo_onnx.engine.runtime.metrics import metrics_at, threshold_for_sensitivity  # noqa: E402

SEED = 20180222  # Kermany et al., Cell, published 2018-02-22
FOLDS = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=("cv", "report"))
    p.add_argument("--data", type=Path, required=True, help="folder with NORMAL/, PNEUMONIA/")
    p.add_argument("--fullres", type=Path, required=True, help="full-resolution subset of --data")
    p.add_argument("--folds", type=int, nargs="+", default=list(range(FOLDS)), help="cv: which")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (smoke tests)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--work", type=Path, default=REPO / "build" / "model-v2", help="fold runs")
    p.add_argument("--cache", type=Path, default=REPO / "build" / "cache", help="decoded images")
    p.add_argument("--out", type=Path, default=REPO / "models" / "pneumonia_cnn_v2.keras")
    p.add_argument("--report", type=Path, default=REPO / "models" / "training_report_v2.json")
    p.add_argument("--split-file", type=Path, default=REPO / "models" / "validation_split_v2.txt")
    return p.parse_args(argv)


class Data:
    """The items, their grouped folds and their cached reference tensors."""

    def __init__(self, args: argparse.Namespace, contract: Contract) -> None:
        self.contract = contract
        self.names = (contract.negative_label, contract.positive_label)
        self.items: list[Item] = list_items(args.data, contract)
        self.fullres = [
            f"{name}/{p.name}"
            for name in self.names
            for p in list_images(args.fullres / name, recursive=False)
        ]
        known = {item.path for item in self.items}
        missing = [path for path in self.fullres if path not in known]
        if missing:
            raise SystemExit(f"{len(missing)} --fullres image(s) not in --data, e.g. {missing[0]}")
        fullres_patients = {patient_id(Path(path).name) for path in self.fullres}
        self.folds = grouped_folds(self.items, FOLDS, args.seed, fullres_patients)
        cache = args.cache
        start = time.perf_counter()
        self.x = cached_pixels(args.data, [item.path for item in self.items], contract, cache)
        self.x_fullres = {
            way: cached_pixels(args.fullres, self.fullres, contract, cache, way)
            for way in ("reference", "fast")
        }
        self.load_seconds = round(time.perf_counter() - start, 1)
        self.y = np.array([item.label for item in self.items])


def run_cv(args: argparse.Namespace, data: Data) -> None:
    import keras

    from models.training.crossval import run_fold
    from models.training.fit import Recipe
    from models.training.pneumonia_cnn import build_model_v2

    recipe = Recipe() if args.epochs is None else replace(Recipe(), epochs=args.epochs)
    args.work.mkdir(parents=True, exist_ok=True)
    for fold in args.folds:
        model, result = run_fold(
            build_model_v2, recipe, data.items, data.x, data.folds, fold, args.seed + fold,
            data.names, lambda line, f=fold: print(f"[fold {f}] {line}", flush=True),
        )  # fmt: skip
        result["versions"] = versions()
        model.save(args.work / f"fold-{fold}.keras")
        (args.work / f"fold-{fold}.json").write_text(json.dumps(jsonable(result), indent=2))
        keras.backend.clear_session()


def run_report(args: argparse.Namespace, data: Data) -> None:
    import keras

    from models.training.fit import predict
    from models.training.pneumonia_cnn import build_model
    from models.training.robustness import fullres_figures
    from models.training.throughput import measure

    if 0 not in args.folds:
        raise SystemExit("report: the final model is fold 0's run; include 0 in --folds")
    runs = [json.loads((args.work / f"fold-{k}.json").read_text()) for k in sorted(args.folds)]
    if any(run["recipe"] != runs[0]["recipe"] for run in runs):
        raise SystemExit(f"the fold runs in {args.work} used different recipes: rerun `cv`")
    final = runs[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Without the optimizer's state (a third of the size); reloaded to check what was written.
    keras.models.load_model(args.work / "fold-0.keras", compile=False).save(args.out)
    model = keras.models.load_model(args.out, compile=False)
    val = data.folds == 0
    scores = predict(model, data.x[val])
    drift = float(np.max(np.abs(scores - final["validation_scores"])))
    if drift > 1e-6:
        raise SystemExit(f"{args.out} scores differ from its fold run by {drift:.2e}")
    threshold, at_threshold = stored_threshold(data.y[val], scores)
    by_path = {item.path: i for i, item in enumerate(data.items)}
    index = np.array([by_path[path] for path in data.fullres])
    val_paths = sorted(item.path for item, v in zip(data.items, val, strict=True) if v)
    args.split_file.write_text("".join(f"{path}\n" for path in val_paths))

    aucs = [run["val_auc"] for run in runs]
    report = {
        "model": args.out.name,
        "model_sha256": hashlib.sha256(args.out.read_bytes()).hexdigest(),
        "architecture": architecture(model),
        "architecture_v1": {k: v for k, v in architecture(build_model()).items() if k != "layers"},
        "data": {
            "train_folder": relative(args.data),
            "fullres_folder": relative(args.fullres),
            "licence": "CC BY 4.0, Kermany et al., Mendeley Data v2, doi:10.17632/rscbjbr9sj.2",
            "images": len(data.items),
            "per_class": split_counts(data.items, data.names),
            "decode_seconds_or_cache": data.load_seconds,
        },
        "split": {
            "kind": f"{FOLDS}-fold, grouped by patient (id from the file name), stratified by "
            "class, seeded; the full-resolution subset's patients forced into fold 0",
            "seed": args.seed,
            "final_validation_fold": 0,
            "validation_file": args.split_file.name,
            "folds": {str(run["fold"]): run["split"]["val"] for run in runs},
            "final": final["split"],
        },
        "recipe": final["recipe"],
        "fold_seeds": [run["seed"] for run in runs],
        "epochs": final["recipe"]["epochs"],
        "cross_validation": {
            "val_auc_per_fold": aucs,
            "val_auc_mean": float(np.mean(aucs)),
            "val_auc_sd": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else None,
            "val_auc_mean_curve": np.mean([r["history"]["val_auc"] for r in runs], 0).tolist(),
            "per_fold": [fold_summary(run) for run in runs],
        },
        "final": {
            "batchnorm": final["batchnorm"],
            "calibration": final["calibration"],
            "threshold": threshold,
            "threshold_rule": "the highest threshold at which the grouped-validation "
            f"sensitivity's one-sided 95% lower confidence bound (Wilson) is >= "
            f"{TARGET_SENSITIVITY}, rounded down to 2 decimals (the highest threshold whose "
            "observed sensitivity is >= the target sits on the target's edge: "
            "validation.recommended_threshold)",
            "at_threshold": at_threshold,
            "validation": final["validation"],
            "robustness": final["robustness"],
            "history": final["history"],
        },
        "fullres_subset": {
            "note": "validation-side images (fold 0 patients): used to calibrate and choose "
            "the threshold, never unseen data",
            **fullres_figures(
                lambda a: predict(model, a),
                data.x[index],
                data.x_fullres,
                data.y[index],
                threshold,
            ),
        },
        "throughput": measure(args.out),
        "versions": final["versions"],
    }
    args.report.write_text(json.dumps(jsonable(report), indent=2) + "\n")
    print(
        f"saved {args.out}, {args.split_file.name}, {args.report.name}: CV AUC "
        f"{report['cross_validation']['val_auc_mean']:.4f} +- "
        f"{report['cross_validation']['val_auc_sd'] or 0:.4f} ({len(runs)} folds); "
        f"threshold {threshold:.4f}; "
        f"throughput {report['throughput']['ratio_v2_over_v1_2_threads_median']}x v1"
    )


def stored_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, dict[str, Any]]:
    """The threshold the model ships with, and its figures on the grouped validation split:
    sensitivity >= the target even at its 95% lower confidence bound, so that the promise does
    not rest on the last few positives of one split."""
    edge = threshold_for_sensitivity(labels, scores, TARGET_SENSITIVITY, confident=True)
    threshold = math.floor(edge * 100) / 100
    return threshold, metrics_at(labels, scores, threshold)


def fold_summary(run: dict[str, Any]) -> dict[str, Any]:
    at = run["validation"]["at_recommended"]
    return {
        "fold": run["fold"],
        "val_auc": run["val_auc"],
        "val_auc_before_bn_reestimation": run["val_auc_before_bn_reestimation"],
        "temperature": run["calibration"]["temperature"],
        "ece_before": run["calibration"]["before"]["ece_10_bins"],
        "ece_after": run["calibration"]["after"]["ece_10_bins"],
        "threshold": run["validation"]["recommended_threshold"],
        "sensitivity": at["sensitivity"],
        "specificity": at["specificity"],
        "robustness_summary": run["robustness"]["summary"],
        "train_seconds": run["history"]["train_seconds"],
    }


def architecture(model: Any) -> dict[str, Any]:
    """Parameters, multiply-add FLOPs of the convolutions and the head, and the layer list."""
    import keras

    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
            out = layer.output.shape
            spatial = out[1] * out[2] if len(out) == 4 else 1
            flops += 2 * spatial * int(np.prod(layer.kernel.shape))
    return {
        "name": model.name,
        "parameters": model.count_params(),
        "gflop_per_image": round(flops / 1e9, 4),
        "layers": [f"{layer.name}: {type(layer).__name__}" for layer in model.layers],
        "last_conv_output": list(model.get_layer("last_conv").output.shape[1:]),
    }


def relative(path: Path) -> str:
    """A path as the report may show it: relative as typed, else its last two parts."""
    return str(path) if not path.is_absolute() else "/".join(path.parts[-2:])


def versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"keras": keras.__version__, "tensorflow": tf.__version__, "numpy": np.__version__}


def jsonable(value: Any) -> Any:
    """Valid JSON: numpy scalars as numbers, non-finite floats as strings like '-inf'."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    data = Data(args, Contract())
    fold0 = [item for item, f in zip(data.items, data.folds, strict=True) if f == 0]
    counts = split_counts(fold0, data.names)
    print(f"{len(data.items)} images; fold 0 (final validation): {counts}", flush=True)
    (run_cv if args.stage == "cv" else run_report)(args, data)


if __name__ == "__main__":
    main()
