"""BentoML as its adaptive-batching guide shows it: a service whose `predict` API is
`batchable=True` (the framework's dispatcher gathers concurrent requests into one call,
within `max_batch_size` and `max_latency_ms`), the multipart field `image` as a PIL image
(BentoML decodes it), one onnxruntime call per batch, on `POST /predict`. As a batchable
API it takes and answers a list (here, of one). One worker per CPU (`workers="cpu_count"`,
the workers guide's setting for CPU-bound services), onnxruntime given the cores / workers.

`bentoml serve` imports this module to build the service, so the settings travel in the
environment (PNEUMO_PEER_ARGS); `main` puts them there and starts `bentoml serve`.
"""

from __future__ import annotations

import json
import os
import sys
from argparse import Namespace

import bentoml
import numpy as np
from PIL.Image import Image

from benchmarks.peers.common import Model, parser

ENV = "PNEUMO_PEER_ARGS"
# Read when `bentoml serve` imports the module: the service's decorators need them then.
ARGS = Namespace(**json.loads(os.environ.get(ENV, "{}")))
WORKERS = os.cpu_count() or 1


# access log off, as uvicorn's for the FastAPI peer: a line per request is not serving
@bentoml.service(
    workers="cpu_count", traffic={"timeout": 120}, logging={"access": {"enabled": False}}
)
class Pneumonia:
    def __init__(self) -> None:
        if not ARGS.threads:
            ARGS.threads = max(1, (os.cpu_count() or 1) // WORKERS)
        self.model = Model.load(ARGS)

    # max_latency_ms stays BentoML's default (60 s): below the latency the load reaches, the
    # dispatcher would refuse requests (503) rather than queue them
    @bentoml.api(batchable=True, max_batch_size=getattr(ARGS, "max_batch", 16), route="/predict")
    def predict(self, image: list[Image]) -> list[dict[str, object]]:
        x = np.stack([self.model.prepare_image(i) for i in image])
        return [self.model.answer(s) for s in self.model.scores(x)]


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    env = {**os.environ, ENV: json.dumps(vars(args))}
    argv = [sys.executable, "-m", "bentoml", "serve", "benchmarks.peers.bentoml_app:Pneumonia"]
    argv += ["--host", args.host, "--port", str(args.port)]
    os.execve(sys.executable, argv, env)


if __name__ == "__main__":
    main()
