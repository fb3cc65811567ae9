"""LitServe as its batching guide shows it: a `LitAPI` with `max_batch_size` and
`batch_timeout`, `decode_request` reading the multipart field `image` (LitServe hands a form
request to it as Starlette's form), `batch` stacking the tensors, one onnxruntime call per
batch, `unbatch`/`encode_response` giving the seed API's answer on `POST /predict` (LitServe's
default path). `accelerator="cpu"`, one inference worker: its default on a CPU."""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation as a
# class (fastapi's Request: hand over the request, whose form it then parses).
import argparse
from typing import Any

import litserve as ls
import numpy as np
from fastapi import Request

from benchmarks.peers.common import Model, parser


class PneumoniaAPI(ls.LitAPI):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(max_batch_size=args.max_batch, batch_timeout=args.delay_ms / 1000)
        self.args = args

    def setup(self, device: str) -> None:
        self.model = Model.load(self.args)

    def decode_request(self, request: Request, **kwargs: Any) -> np.ndarray:
        return self.model.prepare(request["image"].file.read())

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray, **kwargs: Any) -> list[float]:
        return self.model.scores(x)

    def unbatch(self, output: list[float]) -> list[float]:
        return output

    def encode_response(self, output: float, **kwargs: Any) -> dict[str, object]:
        return self.model.answer(output)


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    server = ls.LitServer(PneumoniaAPI(args), accelerator="cpu")
    server.run(host=args.host, port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
