"""A real headless Chromium walks the viewer: home -> layer -> unit -> next unit (keyboard), checks
that images really decoded, reloads the permalink, and saves screenshots; once for an atlas in a
local folder and once for the same atlas on the local S3 server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loupe.jobs.view import create_app

from tests.view.conftest import CHROMIUM, serving

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"Chromium is not installed at {CHROMIUM} (Debian: apt-get install chromium)", allow_module_level=True)

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "viewer"


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def decoded_images(page, selector: str) -> list[int]:
    """naturalWidth of every image matching `selector`, after it finished loading."""
    page.wait_for_function(f"Array.from(document.querySelectorAll('{selector}')).every(i => i.complete)")
    return page.eval_on_selector_all(selector, "images => images.map(i => i.naturalWidth)")


def walk(browser, base: str, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(base + "/")
    assert page.locator("h2", has_text="r20").count() == 1
    page.screenshot(path=str(ARTIFACTS / f"{name}-home.png"))

    page.click("a.layer-link:text('layer2')")
    page.wait_for_url("**/m/r20/layer2")
    page.wait_for_function("document.querySelectorAll('.tile img[src]').length === 12")
    tiles = decoded_images(page, ".tile img[src]")
    assert len(tiles) == 12 and all(width > 0 for width in tiles)
    page.screenshot(path=str(ARTIFACTS / f"{name}-layer.png"))

    page.click(".tile[data-unit='2']")
    page.wait_for_url("**/m/r20/layer2/2")
    for selector in (".render img", ".examples img.picture", ".samples img.picture"):
        widths = decoded_images(page, selector)
        assert widths and all(width > 0 for width in widths), selector
    page.check("#heat-toggle")
    assert page.eval_on_selector(".examples img.heat", "i => getComputedStyle(i).display") == "block"
    assert page.locator("#histogram rect").count() == 6
    page.screenshot(path=str(ARTIFACTS / f"{name}-unit.png"), full_page=True)

    page.keyboard.press("ArrowRight")
    page.wait_for_url("**/m/r20/layer2/3")
    assert page.locator("#unit").get_attribute("data-unit") == "3"
    permalink = page.url
    page.reload()
    assert page.url == permalink and page.locator("#unit").get_attribute("data-unit") == "3"
    assert all(width > 0 for width in decoded_images(page, ".examples img.picture"))
    page.screenshot(path=str(ARTIFACTS / f"{name}-next-unit.png"), full_page=True)
    assert all(r.startswith(base) for r in requests), "the viewer page loads nothing from elsewhere"
    page.close()


def test_walk_a_local_atlas(browser, viewer_url):
    walk(browser, viewer_url, "local")


def test_walk_an_atlas_on_s3(browser, viewer_atlas, s3_bucket, s3_options):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    fs.put(str(viewer_atlas) + "/", f"{s3_bucket}/atlases/viewer/", recursive=True)
    with serving(create_app(f"s3://{s3_bucket}/atlases/viewer", storage_options=s3_options)) as base:
        walk(browser, base, "s3")


@pytest.fixture(scope="module")
def basis_atlas(tmp_path_factory) -> Path:
    """An atlas whose layer2 also has a directions basis, rendered with MACO (RGBA renders)."""
    import numpy as np

    from loupe.jobs.build import run_build
    from loupe.jobs.build.config import parse_config

    from tests.view.conftest import viewer_config
    from tests.builds.build_helpers import write_images

    root = tmp_path_factory.mktemp("viewer-basis")
    np.save(root / "dirs.npy", np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32))
    config = viewer_config(str(root / "atlas"), write_images(root / "images", count=12))
    config["models"][0]["layers"] = [{"name": "layer2", "units": "0-3", "bases": [{
        "name": "dirs", "url": str(root / "dirs.npy"), "render": {"channel": {"param": "maco"}}}]}]
    summary = run_build(parse_config(config), executor="local", progress=False, log=lambda _: None)
    assert summary.published, summary.failed
    return root / "atlas"


def test_walk_a_basis_with_maco_renders(browser, basis_atlas):
    with serving(create_app(str(basis_atlas))) as base:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(base + "/")
        assert page.locator("td.basis", has_text="dirs: 5 directions").count() == 1
        page.click("a.layer-link:text('layer2@dirs')")
        page.wait_for_url("**/m/r20/layer2@dirs")
        page.wait_for_function("document.querySelectorAll('.tile img[src]').length === 5")
        assert all(width > 0 for width in decoded_images(page, ".tile img[src]"))
        assert page.locator("#bases a.basis", has_text="channels").count() == 1
        page.click(".tile[data-unit='1']")
        page.wait_for_url("**/m/r20/layer2@dirs/1")
        assert all(width > 0 for width in decoded_images(page, ".render img"))
        alpha = page.evaluate("""async () => {
            const img = document.querySelector('.render img');
            const canvas = new OffscreenCanvas(img.naturalWidth, img.naturalHeight);
            const context = canvas.getContext('2d');
            context.drawImage(img, 0, 0);
            const data = context.getImageData(0, 0, img.naturalWidth, img.naturalHeight).data;
            let low = 255; for (let i = 3; i < data.length; i += 4) low = Math.min(low, data[i]);
            return low; }""")
        assert alpha < 255, "the MACO render arrives with its transparency map as alpha"
        assert all(width > 0 for width in decoded_images(page, ".examples img.picture"))
        page.keyboard.press("ArrowRight")
        page.wait_for_url("**/m/r20/layer2@dirs/2")
        page.screenshot(path=str(ARTIFACTS / "basis-unit.png"), full_page=True)
        page.close()
