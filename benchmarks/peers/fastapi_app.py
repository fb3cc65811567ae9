"""The plain FastAPI server a user writes first: one `POST /predict` taking the multipart
field `image`, a sync endpoint (FastAPI runs it on its thread pool), Pillow decode, one
onnxruntime call per request, no batching; uvicorn (with uvloop and httptools, the
`standard` extra) in one process, as `uvicorn app:app` starts it."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI, File, UploadFile

from benchmarks.peers.common import Model, parser


def create_app(model: Model) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.post("/predict")
    def predict(image: UploadFile = File(...)) -> dict[str, object]:  # noqa: B008 (FastAPI's idiom)
        x = model.prepare(image.file.read())
        return model.answer(model.scores(x[None])[0])

    return app


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    uvicorn.run(create_app(Model.load(args)), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
