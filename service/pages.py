"""The gateway's own pages: the demo page at ``/`` and the API docs at ``/docs`` (Swagger UI).
Every file they load comes from this gateway: the demo page from ``service/static/``, the Swagger
UI bundle from the pinned ``fastapi-offline`` package. Nothing is fetched from another host, so
the pages work in an air-gapped cluster and tell no third party who looks. There is no
``/redoc``: ReDoc loads its logo from its vendor's CDN whatever its options.

The pages and their assets are public even with auth on (they hold no data; the demo page asks
for the token and sends it with its API calls), and so is ``/openapi.json``, which the docs
pages load before any token could be given. URLs in the pages are relative, so they also work
behind a proxy that adds a path prefix.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["add_pages", "is_public"]

STATIC = Path(__file__).resolve().parent / "static"
DOCS_ASSETS = Path(str(files("fastapi_offline") / "static"))
PUBLIC_PATHS = frozenset({"/", "/docs", "/openapi.json"})
# Swagger UI's defaults would ask validator.swagger.io to check the schema
SWAGGER_PARAMETERS = {"validatorUrl": None}


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/static/")


def add_pages(app: FastAPI) -> None:
    """Mount the static files and the two pages (the app is built with ``docs_url=None`` and
    ``redoc_url=None``: FastAPI's own docs pages load their assets from a CDN)."""
    app.mount("/static/docs", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    title = app.title
    favicon = "static/docs/favicon.png"

    @app.get("/", include_in_schema=False)
    async def demo_page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="openapi.json",
            title=f"{title} - Swagger UI",
            swagger_js_url="static/docs/swagger-ui-bundle.js",
            swagger_css_url="static/docs/swagger-ui.css",
            swagger_favicon_url=favicon,
            swagger_ui_parameters=SWAGGER_PARAMETERS,
        )
