"""PyTriton as its quick start shows it: the real Triton Inference Server (bundled in the
wheel) in front of a Python inference callable decorated with `@batch`, Triton's dynamic
batcher gathering concurrent requests (`max_batch_size`, `max_queue_delay_microseconds`).
Triton has no multipart route: the model takes one BYTES input `image_bytes` (the encoded
JPEG) on Triton's own KServe V2 route, `POST /v2/models/pneumonia/infer`, and answers
output `score`. HTTP on the given port; gRPC and metrics on the next two."""

from __future__ import annotations

import signal
import sys

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from benchmarks.peers.common import Model, parser


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    # SIGTERM as an exit, so that leaving `with Triton` stops the Triton server it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    model = Model.load(args)

    @batch
    def infer(image_bytes: np.ndarray) -> dict[str, np.ndarray]:
        x = np.stack([model.prepare(bytes(b[0])) for b in image_bytes])
        return {"score": np.asarray(model.scores(x), np.float32)[:, None]}

    config = TritonConfig(
        http_address=args.host,
        http_port=args.port,
        grpc_address=args.host,
        grpc_port=args.port + 1,
        metrics_port=args.port + 2,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="pneumonia",
            infer_func=infer,
            inputs=[Tensor(name="image_bytes", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="score", dtype=np.float32, shape=(1,))],
            config=ModelConfig(
                max_batch_size=args.max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=int(args.delay_ms * 1000)),
            ),
        )
        triton.serve()


if __name__ == "__main__":
    main()
