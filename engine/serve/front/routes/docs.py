"""`/docs`: Swagger UI served from files shipped in the package (`engine/serve/static/`), so
the page works on a network with no way out (FastAPI's default loads it from a public CDN), and
`/openapi.json`, served here rather than by FastAPI so that it declares its access as every
route does. All of it is open: it describes the API, it grants nothing."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from pneumo_onnx.engine.errors import NotFoundError
from pneumo_onnx.engine.serve.front.security import access

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).resolve().parents[2] / "static"
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
    "swagger-ui-bundle.js.LICENSE.txt": "text/plain",
}
PREFIX = "/docs/static/"
OPENAPI = "/openapi.json"


@router.get(OPENAPI, dependencies=access("open"))
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs", dependencies=access("open"))
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=OPENAPI,
        title="pneumo-onnx API",
        swagger_js_url=PREFIX + "swagger-ui-bundle.js",
        swagger_css_url=PREFIX + "swagger-ui.css",
        swagger_favicon_url=PREFIX + "favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
    )


@router.get(PREFIX + "{name}", dependencies=access("open"))
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFoundError(f"no documentation asset named {name[:40]!r}")
    return FileResponse(
        STATIC / name, media_type=ASSETS[name], headers={"Cache-Control": "max-age=86400"}
    )
