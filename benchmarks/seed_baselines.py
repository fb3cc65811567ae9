"""The two ways the original deployment guide scored a folder, rewritten here as baselines.

- `loop`: per image, PIL open, RGB, resize to the model size, /255, `model.predict` on a batch
  of one (the guide's PneumoniaPredictor.predict_batch).
- `batch`: `keras.utils.load_img(target_size=...)` per image, then `model.predict` in batches
  of 32 (a typical Keras batch pipeline).

Run as its own process so that start-up (TensorFlow import, model load) is timed, as for
`pneumo batch`:   python -m benchmarks.seed_baselines loop|batch MODEL.keras DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    mode, model_path, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from PIL import Image

    model = keras.saving.load_model(model_path, compile=False)
    size = tuple(model.input_shape[1:3])
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    scores: list[float] = []
    if mode == "loop":
        for p in paths:
            image = Image.open(p).convert("RGB").resize((size[1], size[0]))
            x = np.asarray(image, dtype=np.float32)[None] / 255.0
            scores.append(float(model.predict(x, verbose=0)[0][0]))
    elif mode == "batch":
        for i in range(0, len(paths), 32):
            chunk = [
                keras.utils.img_to_array(keras.utils.load_img(p, target_size=size)) / 255.0
                for p in paths[i : i + 32]
            ]
            scores.extend(float(s) for s in model.predict(np.stack(chunk), verbose=0)[:, 0])
    else:
        raise SystemExit(f"mode must be loop or batch, got {mode!r}")
    positives = sum(s > 0.5 for s in scores)
    print(f"{mode}: {len(scores)} images, {positives} PNEUMONIA")


if __name__ == "__main__":
    main()
