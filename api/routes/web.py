"""The web page for people at `/`, its scripts and styles under `/static/`, and the API docs at
`/docs` and `/redoc`, every file served from this package (nothing from the internet)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
STATIC = "/static"
_VENDOR = f"{STATIC}/vendor"
_FAVICON = f"{STATIC}/favicon.svg"
# Browsers load nothing from elsewhere (should a library link to the internet, it is refused
# rather than tried; ReDoc's CDN logo is patched out of the vendored file, see
# api/web/vendor/README.md); the docs pages start their library with inline scripts.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'"
)

router = APIRouter(include_in_schema=False)


@router.get("/")
def web_page() -> FileResponse:
    """The page; it asks for an API key itself when the API wants one."""
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_POLICY}
    return FileResponse(WEB_DIR / "index.html", headers=headers)


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} API",
        swagger_js_url=f"{_VENDOR}/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{_VENDOR}/swagger-ui/swagger-ui.css",
        swagger_favicon_url=_FAVICON,
    )
    page.headers["Content-Security-Policy"] = DOCS_POLICY
    return page


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    page = get_redoc_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} API",
        redoc_js_url=f"{_VENDOR}/redoc/redoc.standalone.js",
        redoc_favicon_url=_FAVICON,
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = DOCS_POLICY
    return page


def install_web(app: FastAPI) -> None:
    """Serve the page, the docs and the static files (create the app with docs_url=None and
    redoc_url=None, so these routes replace FastAPI's CDN-loading ones)."""
    app.include_router(router)
    app.mount(STATIC, StaticFiles(directory=WEB_DIR), name="static")
