"""Train the reference PneumoniaCNN on Kermany et al.'s chest X-rays (a developer tool, never CI).

    python models/training/train.py --data ../shared/data/kermany224/train \\
        --out models/pneumonia_cnn.keras
    # smoke test, leaving the repository's split and report alone:
    python models/training/train.py --data ../shared/data/kermany224/train --out /tmp/smoke.keras \\
        --limit 300 --epochs 1 --split-file /tmp/split.txt --report /tmp/report.json

`--data` holds one folder per label of the model contract (NORMAL/, PNEUMONIA/). Every image
goes through engine.runtime.preprocess.reference_pixels, the serving-time tensor. The stratified
validation split is written to --split-file on the first run and read back on later runs, so
runs stay comparable; --limit subsamples both parts of that split and never changes it.
Augmentation lives only in the tf.data pipeline, so the saved model is the plain architecture.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from engine.contract import Contract
from engine.runtime.listing import list_images
from engine.runtime.metrics import evaluate
from engine.runtime.preprocess import reference_pixels

REPO = Path(__file__).resolve().parents[2]
VAL_FRACTION = 0.15
Item = tuple[str, int]  # (path relative to --data, label 0/1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="folder with NORMAL/, PNEUMONIA/")
    p.add_argument("--out", type=Path, required=True, help="where to save the .keras model")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=20180222)
    p.add_argument("--limit", type=int, help="use about N images in all (smoke tests)")
    p.add_argument("--split-file", type=Path, default=REPO / "models" / "validation_split.txt")
    p.add_argument("--report", type=Path, default=REPO / "models" / "training_report.json")
    return p.parse_args(argv)


def list_items(data: Path, contract: Contract) -> list[Item]:
    """Every image under data/<negative label>/ and data/<positive label>/, labelled 0 and 1."""
    items = []
    for label, name in enumerate((contract.negative_label, contract.positive_label)):
        paths = list_images(data / name, recursive=False)
        if not paths:
            raise SystemExit(f"expected images in {data / name}, found none")
        items += [(f"{name}/{p.name}", label) for p in paths]
    return items


def validation_paths(split_file: Path, items: list[Item], seed: int) -> tuple[set[str], bool]:
    """The validation paths and whether they were reused: read from `split_file` if it
    exists, else drawn (VAL_FRACTION of each class) and written there, sorted."""
    known = {path for path, _ in items}
    if split_file.exists():
        val = {line.strip() for line in split_file.read_text().splitlines() if line.strip()}
        missing = sorted(val - known)
        if missing:
            raise SystemExit(
                f"{split_file} lists {len(missing)} image(s) not in the data folder, "
                f"e.g. {missing[0]}: delete it to draw a new split"
            )
        return val, True
    val = {path for path, _ in per_class_sample(items, VAL_FRACTION, np.random.default_rng(seed))}
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text("".join(f"{path}\n" for path in sorted(val)))
    return val, False


def per_class_sample(items: list[Item], fraction: float, rng: np.random.Generator) -> list[Item]:
    """A random `fraction` of each class, at least one of each class present, in input order."""
    kept: list[Item] = []
    for label in (0, 1):
        group = [item for item in items if item[1] == label]
        k = min(len(group), max(1, round(fraction * len(group))))
        kept += [group[i] for i in sorted(rng.permutation(len(group))[:k])] if group else []
    return kept


def load_pixels(data: Path, items: list[Item], contract: Contract) -> np.ndarray:
    """All images as one uint8 NHWC array: a quarter of the float32 memory, and exact, since
    the reference tensor is a uint8 image divided by 255."""

    def one(item: Item) -> np.ndarray:
        return np.rint(reference_pixels(data / item[0], contract) * 255).astype(np.uint8)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return np.stack(list(pool.map(one, items)))


def make_dataset(x: np.ndarray, y: np.ndarray, batch: int, seed: int, train: bool):
    """A tf.data pipeline of float32 [0, 1] batches; random augmentation only when `train`."""
    import keras
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.float32)[:, None]))
    if train:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch).map(lambda im, lab: (tf.cast(im, tf.float32) / 255.0, lab))
    if train:
        # Distinct seeds, so that the layers' random draws are not correlated.
        fill = {"fill_mode": "constant", "fill_value": 0.0}  # black, like collimated borders
        augment = [
            keras.layers.RandomRotation(7 / 360, seed=seed + 1, **fill),
            keras.layers.RandomTranslation(0.08, 0.08, seed=seed + 2, **fill),
            keras.layers.RandomZoom(0.1, seed=seed + 3, **fill),
            keras.layers.RandomBrightness(0.1, value_range=(0.0, 1.0), seed=seed + 4),
            keras.layers.RandomContrast(0.1, value_range=(0.0, 1.0), seed=seed + 5),
        ]

        def apply(im: Any, lab: Any) -> tuple[Any, Any]:
            for layer in augment:
                im = layer(im, training=True)
            return tf.clip_by_value(im, 0.0, 1.0), lab

        ds = ds.map(apply)  # sequential: parallel calls would race for the layers' seed state
    return ds.prefetch(tf.data.AUTOTUNE)


def jsonable(value: Any) -> Any:
    """Valid JSON: non-finite floats (a -inf threshold, a NaN loss) become strings like '-inf'."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if str(REPO) not in sys.path:  # run as a script: make `models` importable
        sys.path.insert(0, str(REPO))
    import keras
    import tensorflow as tf

    from models.training.pneumonia_cnn import build_model

    contract = Contract()
    items = list_items(args.data, contract)
    val_paths, reused = validation_paths(args.split_file, items, args.seed)
    train_items = [item for item in items if item[0] not in val_paths]
    val_items = [item for item in items if item[0] in val_paths]
    if args.limit:
        rng, fraction = np.random.default_rng(args.seed), args.limit / len(items)
        train_items = per_class_sample(train_items, fraction, rng)
        val_items = per_class_sample(val_items, fraction, rng)
    y_train = np.array([label for _, label in train_items])
    y_val = np.array([label for _, label in val_items])
    names = (contract.negative_label, contract.positive_label)
    counts = {
        part: dict(zip(names, np.bincount(y, minlength=2).tolist(), strict=True))
        for part, y in (("train", y_train), ("val", y_val))
    }
    print(f"split {'read from' if reused else 'drawn and written to'} {args.split_file}: {counts}")

    start = time.perf_counter()
    x_train, x_val = (load_pixels(args.data, part, contract) for part in (train_items, val_items))
    load_seconds = time.perf_counter() - start
    print(f"loaded {len(x_train) + len(x_val)} images in {load_seconds:.1f} s")

    keras.utils.set_random_seed(args.seed)
    # "Balanced" weights: each class contributes half of the loss, whatever its share.
    class_weight = {
        c: len(y_train) / (2 * max(1, n)) for c, n in enumerate(np.bincount(y_train, minlength=2))
    }
    train_ds = make_dataset(x_train, y_train, args.batch_size, args.seed, train=True)
    val_ds = make_dataset(x_val, y_val, args.batch_size, args.seed, train=False)
    model = build_model(args.seed)
    auc = keras.metrics.AUC(name="auc")
    model.compile(keras.optimizers.Adam(learning_rate=1e-3), "binary_crossentropy", metrics=[auc])
    callbacks = [
        keras.callbacks.EarlyStopping("val_auc", patience=4, mode="max", restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau("val_auc", factor=0.3, patience=2, mode="max"),
    ]
    start = time.perf_counter()
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=args.epochs,
        class_weight=class_weight,
        callbacks=callbacks,
        shuffle=False,  # make_dataset shuffles; Keras would only warn that it cannot
        verbose=2,
    ).history
    train_seconds = time.perf_counter() - start

    scores = model.predict(val_ds, verbose=0).ravel()
    validation = evaluate(y_val, scores)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)
    report = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "split_reused": reused,
        "counts": counts,
        "class_weight": class_weight,
        "epochs_run": len(history["loss"]),
        "best_epoch": int(np.argmax(history["val_auc"])) + 1,
        "load_seconds": round(load_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "versions": {"keras": keras.__version__, "tensorflow": tf.__version__},
        "history": history,
        "validation": validation,
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(jsonable(report), indent=2) + "\n")

    print(
        f"saved {args.out}: {report['epochs_run']} epoch(s), best {report['best_epoch']}, "
        f"{train_seconds:.0f} s; report in {args.report}\n"
        f"validation, {validation['n']} images: ROC AUC {validation['roc_auc']:.4f}, "
        f"Brier {validation['brier']:.4f}"
    )
    for m in (validation["at_threshold"], validation["at_recommended"]):
        print(
            f"  score > {m['threshold']:.4f}: sensitivity {m['sensitivity']:.3f}, "
            f"specificity {m['specificity']:.3f}"
        )


if __name__ == "__main__":
    main()
