"""The server a user of the seed deployment guide would run, as the `serve` suite's baseline:
Flask's own threaded development server (`app.run`, as the guide starts it), the Keras model
loaded once, and per request PIL decode, RGB, resize to the model size, /255,
`model.predict` on a batch of one. Same routes and JSON fields as `pneumo serve`.

    python -m benchmarks.seed_server --port P [--host 127.0.0.1] [--model M.keras]

Needs the `convert` extra (TensorFlow) and Flask (the `dev` and `bench` extras).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.environment import KERAS_MODEL

MAX_UPLOAD = 16 * 1024 * 1024  # the guide's upload limit


def create_app(model_path: Path) -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from flask import Flask, jsonify, request
    from PIL import Image, UnidentifiedImageError

    model = keras.saving.load_model(model_path, compile=False)
    height, width = model.input_shape[1:3]
    app = Flask("seed_server")
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD

    @app.get("/health")
    def health() -> Any:
        return jsonify({"status": "healthy", "model_loaded": True})

    @app.post("/predict")
    def predict() -> Any:
        upload = request.files.get("image")
        if upload is None or not upload.filename:
            return jsonify({"error": "no image file in form field 'image'"}), 400
        try:
            threshold = float(request.form.get("threshold", 0.5))
            image = Image.open(io.BytesIO(upload.read())).convert("RGB").resize((width, height))
        except (ValueError, UnidentifiedImageError, OSError) as e:
            return jsonify({"error": f"cannot read the image: {e}"}), 400
        x = np.asarray(image, dtype=np.float32)[None] / 255.0
        score = float(model.predict(x, verbose=0)[0][0])
        positive = score > threshold
        return jsonify(
            {
                "prediction": "PNEUMONIA" if positive else "NORMAL",
                "confidence": score if positive else 1.0 - score,
                "raw_score": score,
                "threshold": threshold,
            }
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", type=Path, default=KERAS_MODEL)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    create_app(args.model).run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
