"""Pages for people: the web page at /ui, and the API docs at /docs and /redoc served from local
files (the fastapi-offline package ships Swagger UI and ReDoc), so they work on a host without
internet access.

The web page and the docs' script and style files need no API key: they are code and no data,
and every API call the page makes goes through the API's own routes, which need it when one is
set. The docs pages and the schema list every route, so with a key set they need it too unless
`docs_require_api_key` is off (`service.api.middleware.DocsGuard`).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.staticfiles import StaticFiles
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from service.ui import INDEX_HTML, STATIC_DIR

UI_PATH = "/ui"
DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
DOCS_ASSETS_PATH = "/docs/assets"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"

# The pages load nothing from elsewhere; the browser enforces it. (ReDoc would fetch its logo
# from its CDN, and Swagger UI and ReDoc need inline scripts and styles and data: images.)
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
)
UI_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def docs_assets_dir() -> Path:
    """swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png."""
    return Path(str(files("fastapi_offline") / "static"))


def _with_csp(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


def install_pages(app: FastAPI, ui: bool = True) -> None:
    """Add /docs and /redoc (local assets) and, when `ui`, the web page at /ui."""
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=docs_assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_csp(
            get_swagger_ui_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_PATH}",
                swagger_js_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui.css",
                swagger_favicon_url=f"{root}{DOCS_ASSETS_PATH}/favicon.png",
                # no badge that would ask the public validator about this spec
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    @app.get(OAUTH2_REDIRECT_PATH, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_csp(
            get_redoc_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{DOCS_ASSETS_PATH}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{DOCS_ASSETS_PATH}/favicon.png",
                with_google_fonts=False,
            )
        )

    if not ui:
        return
    app.mount(f"{UI_PATH}/static", StaticFiles(directory=STATIC_DIR), name="ui-static")

    @app.get(UI_PATH, include_in_schema=False)
    async def ui_redirect(request: Request) -> Response:
        # the page's links are relative to /ui/, so the address must end in a slash
        return RedirectResponse(f"{request.scope.get('root_path', '')}{UI_PATH}/")

    @app.api_route(f"{UI_PATH}/", methods=["GET", "HEAD"], include_in_schema=False)
    async def ui_page() -> Response:
        return FileResponse(
            INDEX_HTML,
            media_type="text/html",
            headers={"Content-Security-Policy": UI_CSP, "Cache-Control": "no-cache"},
        )
