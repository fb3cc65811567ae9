"""What every peer shares, written as a user of each framework would: onnxruntime with its
default session, Pillow's decode, RGB, the contract's resize to the model size, scaling to the
model's range, the seed API's JSON answer. The suite passes the contract's facts on the command
line (the model's own metadata stays the one source; no peer carries a second copy).

Only the standard library, numpy, Pillow and onnxruntime here: this runs in each peer's venv.
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from PIL import Image

FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", required=True, help="the ONNX file")
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--resize-filter", choices=sorted(FILTERS), required=True)
    p.add_argument("--multiply", type=float, required=True, help="pixels 0-255 x this...")
    p.add_argument("--divide", type=float, required=True, help="... / this")
    p.add_argument("--threshold", type=float, required=True)
    p.add_argument("--labels", default="NORMAL,PNEUMONIA", help="negative,positive")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--delay-ms", type=float, default=5.0, help="batching window")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op; 0: its default")
    return p


@dataclass
class Model:
    """The session and the preprocessing; `scores` takes a batch [N, H, W, 3]."""

    session: ort.InferenceSession
    args: argparse.Namespace

    @classmethod
    def load(cls, args: argparse.Namespace) -> Model:
        options = ort.SessionOptions()
        if args.threads:
            options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
        return cls(session, args)

    def prepare(self, data: bytes) -> np.ndarray:
        """JPEG bytes -> one float32 [H, W, 3] tensor."""
        return self.prepare_image(Image.open(io.BytesIO(data)))

    def prepare_image(self, image: Image.Image) -> np.ndarray:
        size = (self.args.width, self.args.height)
        image = image.convert("RGB").resize(size, FILTERS[self.args.resize_filter])
        x = np.asarray(image, dtype=np.float32)
        return x * np.float32(self.args.multiply) / np.float32(self.args.divide)

    def scores(self, batch: np.ndarray) -> list[float]:
        inp, score = self.session.get_inputs()[0].name, self.session.get_outputs()[0].name
        out = self.session.run([score], {inp: batch.astype(np.float32, copy=False)})[0]
        return [float(s) for s in out.reshape(len(batch), -1)[:, 0]]

    def answer(self, score: float) -> dict[str, object]:
        """The seed API's answer for one score."""
        negative, positive = self.args.labels.split(",")
        t = self.args.threshold
        return {
            "prediction": positive if score > t else negative,
            "confidence": score if score > t else 1.0 - score,
            "raw_score": score,
            "threshold": t,
        }
