"""The original deployment guide's routes: `/health`, `/predict` (multipart), `/predict/base64`
(JSON), same request and answer shapes; `?heatmap=true` adds the X-ray with its heatmap
(evidence for PNEUMONIA; `&negative=true` adds the evidence against it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
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
    form_threshold,
)
from pneumo_onnx.engine.serve.front.inputs import documented_body, off_loop
from pneumo_onnx.engine.serve.front.security import access
from pneumo_onnx.engine.serve.state import caller, degraded, request_id, server

router = APIRouter(tags=["seed"])
DICOM = "application/dicom"
# Bodies that are the image file itself (beside every image/* type).
RAW_TYPES = (DICOM, "application/octet-stream")
HeatmapFlag = Annotated[bool, Query(description="add the X-ray with its heatmap")]
NegativeFlag = Annotated[
    bool, Query(description="with heatmap=true: also draw the evidence against PNEUMONIA")
]
ERRORS: dict[int | str, dict[str, str]] = {
    code: {"description": "JSON {error}"} for code in (400, 401, 413, 422, 429, 503)
}


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
    "/predict", response_model=PredictResponse, responses=ERRORS, dependencies=access("user")
)
async def predict(
    request: Request,
    heatmap: HeatmapFlag = False,
    negative: NegativeFlag = False,
    image: Annotated[UploadFile | None, File(description="the X-ray image file")] = None,
    threshold: Annotated[str | None, Form(description="decision threshold in [0, 1]")] = None,
    raw_threshold: Annotated[
        str | None,
        Query(alias="threshold", description="with the image as the body: decision threshold"),
    ] = None,
) -> Response:
    """Score one uploaded X-ray: multipart field `image`, or the file itself as the body
    (`Content-Type: image/jpeg`, `image/png`, ..., `application/dicom`; no multipart to parse),
    its threshold then as `?threshold=`."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind.startswith("image/") or kind in RAW_TYPES:
        data = await request.body()
        if not data:
            raise UsageError("empty body: send the image file as the request body")
        t = form_threshold(raw_threshold)
        return await _answer(request, data, t, "/predict", None, heatmap, negative)
    if image is None:
        raise UsageError(
            "no image file provided: send it as multipart field 'image', or as the body with "
            "its Content-Type (image/jpeg, image/png, application/dicom)"
        )
    if len((await request.form()).getlist("image")) > 1:  # FastAPI would score one silently
        raise UsageError("expected one multipart field 'image', got several: send one image")
    if not image.filename:
        raise UsageError("no image file selected: the 'image' field has no file name")
    data = await image.read()
    t = form_threshold(threshold)
    return await _answer(request, data, t, "/predict", image.filename, heatmap, negative)


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
    ranked: dict[str, float] = {}
    for part in request.headers.get("accept", "").split(","):
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
