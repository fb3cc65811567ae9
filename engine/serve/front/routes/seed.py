"""The original deployment guide's routes: `/health`, `/predict` (multipart), `/predict/base64`
(JSON), same request and answer shapes; `?heatmap=true` adds the X-ray with its heatmap
(evidence for PNEUMONIA; `&negative=true` adds the evidence against it)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from pneumo_onnx.engine.errors import NotAcceptable, Overloaded, UsageError
from pneumo_onnx.engine.serve.dataplane.dicom import is_dicom
from pneumo_onnx.engine.serve.dataplane.items import Item
from pneumo_onnx.engine.serve.dataplane.scoring import ScoringService
from pneumo_onnx.engine.serve.front.bodies import (
    SMALL_JSON,
    Base64Request,
    base64_image,
    base64_image_task,
    form_parts,
    form_threshold,
    query_flag,
)
from pneumo_onnx.engine.serve.front.inputs import documented_body, off_loop
from pneumo_onnx.engine.serve.front.security import access
from pneumo_onnx.engine.serve.state import caller, degraded, request_id, server

router = APIRouter(tags=["seed"])
DICOM = "application/dicom"
# Bodies that are the image file itself (beside every image/* type).
RAW_TYPES = (DICOM, "application/octet-stream")
ERRORS: dict[int | str, dict[str, str]] = {
    code: {"description": "JSON {error}"} for code in (400, 401, 413, 422, 429, 503)
}


MAX_FORM_PARTS = 16  # /predict takes one file and a threshold
FLAGS = {
    "heatmap": "add the X-ray with its heatmap",
    "negative": "with heatmap=true: also draw the evidence against PNEUMONIA",
}
# /predict reads its own query and body (it is served by `DirectRoutes`): what they may hold,
# for the OpenAPI document.
PREDICT_DOCS: dict[str, Any] = {
    "parameters": [
        *(
            {"name": name, "in": "query", "required": False, "description": text,
             "schema": {"type": "boolean", "default": False}}
            for name, text in FLAGS.items()
        ),
        {"name": "threshold", "in": "query", "required": False,
         "description": "with the image as the body: decision threshold in [0, 1]",
         "schema": {"type": "number", "minimum": 0, "maximum": 1}},
    ],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary",
                                  "description": "the X-ray image file"},
                        "threshold": {"type": "number", "minimum": 0, "maximum": 1,
                                      "description": "decision threshold in [0, 1]"},
                    },
                }
            },
            **{
                kind: {"schema": {"type": "string", "format": "binary"}}
                for kind in ("image/jpeg", "image/png", *RAW_TYPES)
            },
        },
    },
}  # fmt: skip


HeatmapFlag = Annotated[bool, Query(description=FLAGS["heatmap"])]
NegativeFlag = Annotated[bool, Query(description=FLAGS["negative"])]


class PredictResponse(BaseModel):
    prediction: str
    confidence: float
    raw_score: float
    threshold: float
    heatmap: str | None = Field(None, description="with ?heatmap=true: base64 PNG overlay")
    heatmap_method: str | None = Field(None, description="cam or occlusion")


@router.get("/health", dependencies=access("health"))
async def health(request: Request) -> JSONResponse:
    """Ready (200) once the model is loaded and warmed up, 503 before."""
    service = server(request).service
    if not service.ready:
        state = "unloaded" if service.default_model else "loading"
        return JSONResponse({"status": state, "model_loaded": False}, status_code=503)
    served = service.registry.current(service.default_model)
    problems = degraded(server(request))
    return JSONResponse(
        {
            "status": "degraded" if problems else "healthy",
            **({"degraded": problems} if problems else {}),
            "model_loaded": True,
            "model": served.name,
            "version": str(served.version),
            "variant": served.engine.model.variant,
            "provider": served.engine.provider,
        },
        status_code=503 if problems else 200,
    )


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    openapi_extra=PREDICT_DOCS,
    dependencies=access("user"),
)
async def predict(request: Request) -> Response:
    """Score one uploaded X-ray: multipart field `image`, or the file itself as the body
    (`Content-Type: image/jpeg`, `image/png`, ..., `application/dicom`; no multipart to parse),
    its threshold then as `?threshold=`. Served by `DirectRoutes` (it reads its own query)."""
    query = request.query_params
    heatmap = query_flag(query.get("heatmap"), "heatmap")
    negative = query_flag(query.get("negative"), "negative")
    content_type = request.headers.get("content-type", "")
    kind = content_type.split(";")[0].strip().lower()
    if kind.startswith("image/") or kind in RAW_TYPES:
        data = await request.body()
        if not data:
            raise UsageError("empty body: send the image file as the request body")
        t = form_threshold(query.get("threshold"))
        return await _answer(request, data, t, "/predict", None, heatmap, negative)
    no_image = UsageError(
        "no image file provided: send it as multipart field 'image', or as the body with "
        "its Content-Type (image/jpeg, image/png, application/dicom)"
    )
    if kind != "multipart/form-data":  # a urlencoded form, say: no file in it
        raise no_image
    parts = form_parts(await request.body(), content_type, MAX_FORM_PARTS)
    images = [p for p in parts if p.name == "image"]
    if len(images) > 1:
        raise UsageError("expected one multipart field 'image', got several: send one image")
    if not images or images[0].filename is None:
        raise no_image
    image = images[0]
    if not image.filename:
        raise UsageError("no image file selected: the 'image' field has no file name")
    thresholds = [p for p in parts if p.name == "threshold"]
    if thresholds and thresholds[-1].filename is not None:
        raise UsageError("the 'threshold' field must be text, a number in [0, 1]")
    text = thresholds[-1].data.decode("utf-8", "replace") if thresholds else None
    t = form_threshold(text)
    return await _answer(request, image.data, t, "/predict", image.filename, heatmap, negative)


@router.post(
    "/predict/base64",
    response_model=PredictResponse,
    responses=ERRORS,
    openapi_extra=documented_body(Base64Request),
    dependencies=access("user"),
)
async def predict_base64(
    request: Request,
    heatmap: HeatmapFlag = False,
    negative: NegativeFlag = False,
) -> Response:
    """Score one base64-encoded X-ray: JSON `{"image": ..., "threshold": ...}`."""
    raw = await request.body()
    if len(raw) <= SMALL_JSON:
        data, threshold = await off_loop(base64_image, raw)
    else:  # parsed in a decode worker, where the OS bounds what the objects take
        service = server(request).service
        data, threshold = await service.decoders.parse(len(raw), base64_image_task, raw)
    return await _answer(request, data, threshold, "/predict/base64", None, heatmap, negative)


async def _answer(
    request: Request,
    data: bytes,
    threshold: float | None,
    route: str,
    name: str | None,
    heatmap: bool,
    negative: bool,
) -> Response:
    if negative and not heatmap:
        raise UsageError("negative=true adds to the heatmap: ask for it with heatmap=true")
    service = server(request).service
    require_ready(service)
    report = wants_report(request)
    if report and not is_dicom(Item(data=data, name=name)):
        raise NotAcceptable(
            "Accept: application/dicom answers a Structured Report, which needs a DICOM image: "
            "send one, or accept application/json"
        )
    if report and heatmap:
        raise UsageError("heatmap=true answers JSON: ask for it, or the report, not both")
    result, served = await service.predict(
        data, threshold, request_id(request), route, name, caller(request)
    )
    version = {"X-Model-Version": f"{served.name}/{served.version}"}
    if report:
        sr = await service.reports.report(served, data, result, name)
        return Response(sr, media_type=DICOM, headers=version)
    body: dict[str, object] = dict(result)
    if heatmap:  # the seed's fields stay as they are; the picture comes beside them
        body["heatmap_method"], body["heatmap"] = await service.heatmap(
            served, data, result, name, negative
        )
    return JSONResponse(body, headers=version)


def wants_report(request: Request) -> bool:
    """The Accept header prefers a DICOM file (a Structured Report) to JSON: it names
    application/dicom, and JSON not at all or at a lower quality."""
    accept = request.headers.get("accept", "")
    if "dicom" not in accept.lower():  # most clients: */* or application/json
        return False
    ranked: dict[str, float] = {}
    for part in accept.split(","):
        kind, *params = (p.strip() for p in part.split(";"))
        q = next((p[2:] for p in params if p.startswith("q=")), "1")
        try:
            ranked[kind.lower()] = float(q)
        except ValueError:
            ranked[kind.lower()] = 0.0
    dicom = ranked.get(DICOM, 0.0)
    return dicom > 0 and dicom > ranked.get("application/json", 0.0)


def require_ready(service: ScoringService) -> None:
    if not service.default_model:
        raise Overloaded("the model is still loading", retry_after=2)
    if not service.ready:
        raise Overloaded(f"model {service.default_model!r} is not loaded", retry_after=5)
