"""The web page at /ui and the API docs in a real browser: headless Debian Chromium driven by
Playwright against a real uvicorn on 127.0.0.1. Each test acts as a person would (pick a model,
press a button, drop a file, move the slider) and checks what appears on the screen.

Screenshots go to test-artifacts/ui/; with UPDATE_SCREENSHOTS=1 the ones docs/ui.md shows are
written to docs/ui/ as well:

    UPDATE_SCREENSHOTS=1 python -m pytest tests/test_browser.py

Chromium comes from Debian (`apt-get install chromium`; .ci/run installs it where it can), not
from Playwright's own download, which cannot happen on our machines.
"""

from __future__ import annotations

import base64
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from service.images import png_bytes, to_uint8_images
from tests.conftest import MODELS, ROOT, LiveServer

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")

from playwright.sync_api import (  # noqa: E402
    Browser,
    FilePayload,
    Page,
    ViewportSize,
    expect,
)

CHROMIUM = Path(os.environ.get("LATENTSERVE_CHROMIUM", "/usr/bin/chromium"))
# the closed network refuses Chromium's background connections: ask for none
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts" / "ui"
DOCS_SHOTS = ROOT / "docs" / "ui"
DESKTOP = ViewportSize(width=1200, height=900)
PHONE = ViewportSize(width=390, height=844)
API_KEY = "browser-test-key"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (or set "
        "LATENTSERVE_CHROMIUM) to run the browser tests",
    ),
]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "viewport": DESKTOP}


def screenshot(
    target: Any, name: str, docs: bool = False, full_page: bool = True, blur: bool = True
) -> Path:
    """Save a screenshot (a Page: the whole page; a Locator: that element) as an artifact, and
    for docs/ui.md too when UPDATE_SCREENSHOTS=1."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page = target if isinstance(target, Page) else target.page
    if blur:  # no focus ring left by the test's last key press
        page.evaluate("document.activeElement?.blur()")
    if isinstance(target, Page):
        target.screenshot(path=path, full_page=full_page)
    else:
        target.screenshot(path=path)
    if docs and os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_SHOTS / path.name)
    return path


class Visit:
    """A page on the live server that records every request it makes and every script error.

    `blocked_elsewhere`: requests for other hosts are allowed to be attempted as long as none
    gets through (ReDoc asks its CDN for its logo; the page's Content-Security-Policy blocks it).
    """

    def __init__(self, page: Page, server: LiveServer) -> None:
        self.page = page
        self.server = server
        self.own = urlsplit(server.url).netloc
        self.requested: set[str] = set()
        self.answered: set[str] = set()
        self.blocked_elsewhere = False
        self.errors: list[str] = []
        page.on("request", lambda r: self.requested.add(urlsplit(r.url).netloc))
        page.on("response", lambda r: self.answered.add(urlsplit(r.url).netloc))
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, path: str = "/ui/", model: str | None = None) -> Page:
        self.page.goto(f"{self.server.url}{path}")
        if model is not None:
            self.pick_model(model)
        return self.page

    def pick_model(self, name: str) -> None:
        picker = self.page.get_by_role("combobox", name="Model")
        expect(picker.locator(f"option[value='{name}']")).to_have_count(1)
        picker.select_option(name)
        expect(self.page.get_by_label("Model facts")).to_contain_text("provider in use")
        expect(self.page.locator("#model-description")).not_to_be_empty()

    def check_clean(self) -> None:
        """Nothing but the server was asked for anything, and no script failed."""
        elsewhere = self.answered - {self.own, ""}
        assert not elsewhere, f"the page loaded something from other hosts: {elsewhere}"
        if not self.blocked_elsewhere:
            tried = self.requested - {self.own, ""}
            assert not tried, f"the page asked other hosts: {tried}"
        assert not self.errors, self.errors


@pytest.fixture
def visit(page: Page, live_server: LiveServer) -> Iterator[Visit]:
    v = Visit(page, live_server)
    yield v
    v.check_clean()


def image_size(page: Page, locator: Any) -> tuple[int, int]:
    """The decoded size of an <img> (0 x 0 if it did not decode)."""
    expect(locator).to_be_visible()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=locator.element_handle()
    )
    w, h = locator.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    return int(w), int(h)


def grid_size(n: int, cell: int, scale: int) -> int:
    """Width of the API's PNG grid of n cells: ceil(sqrt(n)) columns, 1-pixel borders."""
    cols = min(n, math.ceil(math.sqrt(n)))
    return cols * (cell * scale + 1) + 1


def digit_png(x: np.ndarray) -> bytes:
    return png_bytes(to_uint8_images(x.reshape(1, 64).astype(np.float32), (1, 8, 8), (0.0, 1.0))[0])


def png_file(name: str, data: bytes) -> FilePayload:
    return FilePayload(name=name, mimeType="image/png", buffer=data)


def noise_png(size: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return png_bytes(rng.integers(0, 256, size=(size, size), dtype=np.uint8))


def drop_files(page: Page, selector: str, files: dict[str, bytes]) -> None:
    """What dropping files from the desktop does: a drop event whose DataTransfer holds them."""
    payload = [{"name": k, "b64": base64.b64encode(v).decode()} for k, v in files.items()]
    page.locator(selector).evaluate(
        """(zone, files) => {
            const data = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
                data.items.add(new File([bytes], f.name, { type: "image/png" }));
            }
            for (const type of ["dragenter", "dragover", "drop"]) {
                const init = { dataTransfer: data, bubbles: true, cancelable: true };
                zone.dispatchEvent(new DragEvent(type, init));
            }
        }""",
        payload,
    )


# -- samples -----------------------------------------------------------------------------------


def test_samples_are_large_and_the_same_seed_gives_the_same_samples(visit: Visit) -> None:
    page = visit.open(model="digits-vae")
    facts = page.get_by_label("Model facts")
    expect(facts).to_contain_text("vae")
    expect(facts).to_contain_text("cpu")  # the provider in use, as /models reports it
    expect(page.get_by_role("table", name="Calibration")).to_contain_text("0.0544")
    expect(page.locator("#calibration-set")).to_contain_text("digits validation split (n = 180)")
    samples = page.locator("#panel-samples")
    expect(samples.get_by_label("Label", exact=True)).to_be_hidden()  # not a conditional model

    page.get_by_role("spinbutton", name="Samples", exact=True).fill("16")
    page.get_by_label("Seed", exact=True).fill("42")
    page.get_by_role("button", name="Sample", exact=True).click()
    grid = page.get_by_role("img", name="16 samples from digits-vae, seed 42")
    w, h = image_size(page, grid)
    # 16 digits of 8x8 drawn large and crisp: the API's `scale`, not the browser, enlarges them
    scale = (w - 1 - 4) // (4 * 8)
    assert scale >= 8 and w == h == grid_size(16, 8, scale)
    expect(page.locator("#sample-results figcaption")).to_contain_text(f"drawn at {scale}×")

    page.get_by_role("button", name="Same seed again").click()
    verdict = page.get_by_role("status").filter(has_text="Same seed")
    expect(verdict).to_contain_text("Same seed, same samples")
    expect(verdict).to_contain_text("identical, byte for byte")
    grids = page.get_by_role("img", name="16 samples from digits-vae, seed 42")
    expect(grids).to_have_count(2)
    pixels = [
        grids.nth(i).evaluate(
            """img => {
                const c = document.createElement("canvas");
                c.width = img.naturalWidth;
                c.height = img.naturalHeight;
                const ctx = c.getContext("2d");
                ctx.drawImage(img, 0, 0);
                return Array.from(ctx.getImageData(0, 0, c.width, c.height).data).join(",");
            }"""
        )
        for i in range(2)
    ]
    assert pixels[0] == pixels[1]  # what is on the screen, not only what the page says
    screenshot(page, "samples-same-seed", docs=True)


def test_a_conditional_model_samples_the_chosen_label(visit: Visit) -> None:
    page = visit.open(model="mnist-cvae")
    expect(page.get_by_label("Model facts")).to_contain_text("10")  # classes
    label = page.locator("#panel-samples").get_by_label("Label")
    expect(label).to_be_visible()
    page.get_by_role("spinbutton", name="Samples", exact=True).fill("10")
    page.get_by_role("button", name="Sample", exact=True).click()  # each label in turn
    w, _ = image_size(page, page.get_by_role("img", name="10 samples from mnist-cvae, seed 42"))
    assert (w - 1 - 4) % (4 * 28) == 0  # 4 columns of 28x28 digits at a whole scale
    screenshot(page.locator("#panel-samples"), "samples-conditional", docs=True)

    with page.expect_request("**/sample") as sent:
        label.select_option("7")
        page.get_by_role("button", name="Sample", exact=True).click()
    body = sent.value.post_data_json
    assert body is not None and body["labels"] == [7]
    image_size(page, page.get_by_role("img", name="10 samples from mnist-cvae, seed 42"))


# -- latent walk -------------------------------------------------------------------------------


def test_latent_walk_between_two_seeds_with_the_slider(visit: Visit) -> None:
    page = visit.open(model="mnist-conv-vae")
    page.get_by_role("tab", name="Latent walk").click()
    page.get_by_label("two seeds").check()
    page.get_by_label("Start seed").fill("3")
    page.get_by_label("End seed").fill("11")
    page.get_by_label("Path", exact=True).select_option("spherical")
    page.get_by_label("Steps").fill("9")
    page.get_by_role("button", name="Walk", exact=True).click()

    strip = page.get_by_role("list", name="The path, start to end")
    expect(strip.get_by_role("img")).to_have_count(9)
    current = page.locator("#walk-image")
    assert image_size(page, current) == (28 * 9, 28 * 9)  # 28x28 drawn at scale 9
    expect(page.locator("#walk-caption")).to_contain_text("step 1 of 9")

    slider = page.get_by_label("Position on the path")
    slider.focus()
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    expect(page.locator("#walk-caption")).to_contain_text("step 5 of 9 · t = 0.50")
    expect(strip.get_by_role("button", name="step 5")).to_have_attribute("aria-current", "step")
    assert current.get_attribute("src") == strip.get_by_role("img").nth(4).get_attribute("src")
    screenshot(page.locator("#panel-walk"), "latent-walk", docs=True)


@pytest.mark.parametrize("source", ["latents", "images"])
def test_latent_walk_between_two_latents_or_two_uploaded_images(
    visit: Visit, source: str, digits_test: tuple[np.ndarray, np.ndarray]
) -> None:
    page = visit.open(model="digits-vae")
    page.get_by_role("tab", name="Latent walk").click()
    page.get_by_label(f"two {source}").check()
    if source == "latents":
        page.get_by_label("Start latent").fill(str([-1.5] * 8))
        page.get_by_label("End latent").fill(str([1.5] * 8))
    else:
        x, _ = digits_test
        page.get_by_label("Start image").set_input_files(files=[png_file("a.png", digit_png(x[0]))])
        page.get_by_label("End image").set_input_files(files=[png_file("b.png", digit_png(x[1]))])
    page.get_by_label("Path", exact=True).select_option("linear")
    page.get_by_label("Steps").fill("6")
    page.get_by_role("button", name="Walk", exact=True).click()
    expect(
        page.get_by_role("list", name="The path, start to end").get_by_role("img")
    ).to_have_count(6)
    assert image_size(page, page.locator("#walk-image")) == (8 * 16, 8 * 16)
    page.get_by_role("button", name="step 6").click()
    expect(page.locator("#walk-caption")).to_contain_text("step 6 of 6 · t = 1.00")


def test_a_model_without_an_encoder_cannot_walk_between_images(visit: Visit) -> None:
    page = visit.open(model="mnist-dcgan")
    page.get_by_role("tab", name="Latent walk").click()
    expect(page.get_by_label("two images")).to_be_disabled()
    expect(page.locator("#walk-images-why")).to_have_text("(needs an encoder)")


# -- anomaly -----------------------------------------------------------------------------------


def api_scores(
    server: LiveServer, files: dict[str, bytes], method: str, model: str = "digits-vae"
) -> dict[str, Any]:
    form = {"model": model, "method": method, "k": "64", "seed": "0"}
    upload = [("images", (name, data, "image/png")) for name, data in files.items()]
    r = httpx.post(f"{server.url}/anomaly-score", data=form, files=upload, timeout=30)
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def shown_number(text: str) -> float:
    return float(text.strip().split()[-1])


def test_dropped_images_are_scored_against_the_calibration(
    visit: Visit, digits_test: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits_test
    files = {"digit.png": digit_png(x[0]), "noise.png": noise_png(8)}
    expected = {
        m: api_scores(visit.server, files, m)
        for m in ("reconstruction", "elbo", "iwae", "elbo-complexity", "combined")
    }
    assert expected["reconstruction"]["is_outlier"] == [False, True]  # the premise of the test

    page = visit.open(model="digits-vae")
    page.get_by_role("tab", name="Anomaly").click()
    page.get_by_label("Samples k (likelihood scores)").fill("64")
    drop_files(page, "#drop-zone", files)

    results = page.locator("#anomaly-results")
    brightness: dict[str, float] = {}
    for i, name in enumerate(files):
        card = results.get_by_role("article", name=f"result for {name}")
        expect(card).to_be_visible()
        # original, reconstruction (8x8 drawn at scale 14) and the per-pixel error heatmap
        assert image_size(page, card.get_by_role("img", name=f"original: {name}")) == (8, 8)
        rec = card.get_by_role("img", name=f"reconstruction of {name}")
        assert image_size(page, rec) == (8 * 14, 8 * 14)
        heat = card.get_by_role("img", name=f"per-pixel error heatmap of {name}")
        assert heat.evaluate("c => [c.width, c.height]") == [8, 8]
        brightness[name] = heat.evaluate(
            "c => c.getContext('2d').getImageData(0, 0, 8, 8).data"
            ".reduce((sum, v, j) => (j % 4 < 3 ? sum + v : sum), 0)"
        )

        table = card.get_by_role("table", name=f"scores of {name}")
        for method, answer in expected.items():
            row = table.get_by_role("row").filter(
                has=page.get_by_role("rowheader", name=method, exact=True)
            )
            cells = row.get_by_role("cell")
            assert shown_number(cells.nth(0).inner_text()) == pytest.approx(
                answer["scores"][i], rel=5e-3
            )
            threshold = answer["threshold"]
            if threshold is None:
                expect(cells.nth(1)).to_have_text("—")
                expect(row).to_contain_text("no threshold")
            else:
                assert shown_number(cells.nth(1).inner_text()) == pytest.approx(threshold, rel=5e-3)
                verdict = "outlier" if answer["is_outlier"][i] else "inlier"
                expect(cells.nth(3)).to_have_text(verdict)
                chart = row.get_by_role("img")  # the calibration strip, described in words
                expect(chart).to_have_attribute(
                    "aria-label", re.compile(f"threshold {re.escape(cells.nth(1).inner_text())}$")
                )
    # one colour scale for all: the noise lights the heatmap up, the digit barely does
    assert brightness["noise.png"] > 2 * brightness["digit.png"]
    expect(results.get_by_role("article", name="result for noise.png")).to_contain_text(
        "outlier by reconstruction"
    )
    expect(results.get_by_role("article", name="result for noise.png")).to_contain_text(
        "above the 99.9% quantile"
    )
    screenshot(page.locator("#panel-anomaly"), "anomaly", docs=True)


def test_inputs_a_likelihood_does_not_describe_are_flagged_above_the_scores(
    visit: Visit,
) -> None:
    """mnist-conv-vae models binarized digits: gray pixels are scored, with the API's warning."""
    noise = noise_png(28)
    methods = ("reconstruction", "elbo", "iwae", "elbo-complexity", "combined")
    warnings = [
        w
        for m in methods
        for w in api_scores(visit.server, {"n.png": noise}, m, "mnist-conv-vae")["input_warnings"]
    ]
    assert len(warnings) == 4 and "elbo scores of such inputs" in warnings[0]  # the premise
    page = visit.open(model="mnist-conv-vae")
    page.get_by_role("tab", name="Anomaly").click()
    page.get_by_label("Choose images").set_input_files(files=[png_file("noise.png", noise)])
    table = page.get_by_role("table", name="scores of noise.png")
    expect(table.locator("tr.warning")).to_have_text(warnings)  # each under its method's row
    expect(table.locator("tr.warning + tr th").first).to_have_text("iwae")
    expect(table.get_by_role("row").nth(1)).to_contain_text("reconstruction")  # no warning
    screenshot(table, "anomaly-warning", docs=True)
    # a binary image breaks nothing: no warning
    page.get_by_label("Choose images").set_input_files(
        files=[png_file("binary.png", png_bytes(np.where(np.eye(28) > 0, 255, 0).astype(np.uint8)))]
    )
    expect(page.get_by_role("article", name="result for binary.png")).to_be_visible()
    expect(page.locator("#anomaly-results .warning")).to_have_count(0)


def test_a_gan_is_scored_by_its_discriminator_from_picked_files(visit: Visit) -> None:
    page = visit.open(model="mnist-dcgan")
    page.get_by_role("tab", name="Anomaly").click()
    page.get_by_label("Choose images").set_input_files(files=[png_file("noise.png", noise_png(28))])
    card = page.get_by_role("article", name="result for noise.png")
    expect(card).to_contain_text("has no encoder")
    table = card.get_by_role("table", name="scores of noise.png")
    expect(table.get_by_role("rowheader")).to_have_text(["discriminator"])
    expect(table).to_contain_text("outlier")
    expect(card.get_by_role("img", name="per-pixel error heatmap of noise.png")).to_have_count(0)


# -- phone width, labels, the API key --------------------------------------------------------


def test_the_page_works_at_phone_width(browser: Browser, live_server: LiveServer) -> None:
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True)
    try:
        page = context.new_page()
        visit = Visit(page, live_server)
        visit.open(model="digits-vae")
        page.get_by_role("button", name="Sample", exact=True).click()
        grid = page.get_by_role("img", name="16 samples from digits-vae, seed 42")
        image_size(page, grid)
        box = grid.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        wide = page.evaluate("document.scrollingElement.scrollWidth")
        assert wide <= PHONE["width"], f"the page scrolls sideways ({wide} px wide)"
        page.get_by_role("tab", name="Anomaly").click()
        page.get_by_role("button", name="try a sample and noise").click()
        expect(page.get_by_role("article")).to_have_count(2)
        assert page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
        page.get_by_role("tab", name="Samples").click()
        screenshot(page, "phone", docs=True)
        visit.check_clean()
    finally:
        context.close()


def test_every_control_has_an_accessible_name(visit: Visit) -> None:
    page = visit.open(model="mnist-cvae")
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll("input, select, textarea, button")]
            .filter((c) => !(c.labels?.length || c.getAttribute("aria-label")
                || c.getAttribute("aria-labelledby") || c.textContent.trim()))
            .map((c) => c.outerHTML)"""
    )
    assert unnamed == []
    for name in ("API key", "Seed", "Temperature", "Pixel size", "Start seed", "Steps"):
        expect(page.get_by_label(name, exact=True)).to_have_count(1)
    expect(page.get_by_role("spinbutton", name="Samples", exact=True)).to_have_count(1)
    expect(page.get_by_role("tab")).to_have_count(3)


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[LiveServer]:
    env = {
        "LATENTSERVE_MODEL_REPOSITORY": str(MODELS),
        "LATENTSERVE_ENABLED_MODELS": "digits-vae",
        "LATENTSERVE_API_KEY": API_KEY,
    }
    server = LiveServer(env).start()
    try:
        yield server
    finally:
        server.stop()


def test_a_server_with_an_api_key_asks_for_it(page: Page, keyed_server: LiveServer) -> None:
    visit = Visit(page, keyed_server)
    visit.open()
    notice = page.get_by_role("alert").filter(has_text="API key")
    expect(notice).to_contain_text("needs an API key (401)")
    expect(page.get_by_label("API key")).to_be_focused()
    screenshot(page, "api-key", docs=True, full_page=False, blur=False)

    page.get_by_label("API key").fill("wrong")
    page.get_by_role("button", name="Use key").click()
    expect(notice).to_contain_text("refused this API key")

    page.get_by_label("API key").fill(API_KEY)
    page.get_by_role("button", name="Use key").click()
    expect(page.get_by_role("combobox", name="Model")).to_have_value("digits-vae")
    expect(page.locator("#notice")).to_be_hidden()
    with page.expect_request("**/sample") as sent:
        page.get_by_role("button", name="Sample", exact=True).click()
    assert sent.value.headers["authorization"] == f"Bearer {API_KEY}"
    image_size(page, page.get_by_role("img", name="16 samples from digits-vae, seed 42"))
    assert page.evaluate("sessionStorage.getItem('latentserve.apiKey')") == API_KEY
    visit.check_clean()


# -- offline API docs --------------------------------------------------------------------------


def test_swagger_ui_and_redoc_render_offline(visit: Visit) -> None:
    page = visit.page
    visit.blocked_elsewhere = True  # ReDoc tries its CDN for a logo; the CSP stops it
    page.route(  # a closed network: any request for another host fails, as it would offline
        "**/*",
        lambda route: (
            route.continue_()
            if urlsplit(route.request.url).netloc == urlsplit(visit.server.url).netloc
            else route.abort()
        ),
    )
    visit.open("/docs")
    expect(page.locator(".opblock-summary-path", has_text="/sample").first).to_be_visible()
    expect(page.get_by_text("Draw samples from the prior")).to_be_visible()
    expect(page.locator(".opblock")).to_have_count(len(_operations(visit.server)))
    screenshot(page, "docs-offline", docs=True, full_page=False)

    visit.open("/redoc")
    expect(page.get_by_role("heading", name="Draw samples from the prior")).to_be_visible()


def _operations(server: LiveServer) -> list[tuple[str, str]]:
    spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    return [(path, method) for path, ops in spec["paths"].items() for method in ops]
