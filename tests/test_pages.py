"""The web page and the API docs, in-process: their files are served from the package, they name
no other host, they need no key while the API behind them does, and the page can be turned off.
What a person sees in a browser: tests/test_browser.py."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch

import pytest

from service.ui import STATIC_DIR
from tests.conftest import ROOT, AppClient

SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # a name, not an address that is fetched
# every src= or href= in a page, and url(...) in a stylesheet
_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\(\s*["']?([^"')]+)""")


def references(text: str) -> list[str]:
    return [a or b for a, b in _REFERENCE.findall(text)]


async def test_ui_page_and_its_assets_come_from_the_service(client: AppClient) -> None:
    redirect = await client.get("/ui")
    assert redirect.status_code == 307 and redirect.headers["location"] == "/ui/"
    page = await client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    refs = references(page.text)
    assert {"static/app.js", "static/style.css"} <= set(refs)
    for ref in refs:
        assert "//" not in ref, f"the page loads {ref} from another host"
        r = await client.get(f"/ui/{ref}")
        assert r.status_code == 200 and r.content, ref
    for name in ("app.js", "style.css"):
        text = (STATIC_DIR / name).read_text()
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {SVG_NAMESPACE}
        assert not urls, f"{name} names other hosts: {urls}"
    js = await client.get("/ui/static/app.js")
    assert "javascript" in js.headers["content-type"]


@pytest.mark.parametrize(
    ("path", "marker"),
    [
        pytest.param("/docs", "SwaggerUIBundle", id="swagger-ui"),
        pytest.param("/redoc", "redoc", id="redoc"),
    ],
)
async def test_docs_pages_load_their_assets_from_the_service(
    client: AppClient, path: str, marker: str
) -> None:
    page = await client.get(path)
    assert page.status_code == 200 and marker in page.text
    refs = references(page.text)
    assert refs, "the page names its script"
    for ref in refs:
        assert ref.startswith("/docs/assets/"), f"{path} loads {ref} from elsewhere"
        asset = await client.get(ref)
        assert asset.status_code == 200 and len(asset.content) > 100, ref
    assert "googleapis" not in page.text and "cdn." not in page.text
    csp = page.headers["content-security-policy"]  # what the assets may still try is blocked
    assert "default-src 'self'" in csp and "img-src 'self' data:" in csp and "http" not in csp
    assert (await client.get("/openapi.json")).status_code == 200


async def test_pages_need_no_key_but_every_api_call_does(app_with) -> None:  # type: ignore[no-untyped-def]
    """The page and the docs' script files are code, no data; the docs pages and the schema
    list every route and follow `docs_require_api_key` (tests/test_hardening.py)."""
    async with app_with(api_key="s3cret") as c:
        for open_path in ("/ui/", "/ui/static/app.js", "/docs/assets/swagger-ui.css"):
            assert (await c.get(open_path)).status_code == 200, open_path
        for guarded in ("/docs", "/redoc", "/openapi.json"):
            assert (await c.get(guarded)).status_code == 401, guarded
        assert (await c.get("/models")).status_code == 401
        assert (await c.post("/sample", json={"n": 1})).status_code == 401
    async with app_with(api_key="s3cret", docs_require_api_key=False) as c:
        for open_path in ("/docs", "/redoc", "/openapi.json"):
            assert (await c.get(open_path)).status_code == 200, open_path


async def test_the_page_can_be_turned_off(app_with) -> None:  # type: ignore[no-untyped-def]
    async with app_with(ui=False) as c:
        assert (await c.get("/ui/")).status_code == 404
        assert (await c.get("/ui/static/app.js")).status_code == 404
        assert (await c.get("/docs")).status_code == 200


def test_page_files_ship_in_the_wheel() -> None:
    """Every file of the page matches the package-data globs (the wheel would lack it otherwise)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["service.ui"]
    files = [p.relative_to(STATIC_DIR.parent).as_posix() for p in STATIC_DIR.rglob("*")]
    assert files
    for f in files:
        assert any(fnmatch(f, g) for g in globs), f"{f} is not in [tool.setuptools.package-data]"
