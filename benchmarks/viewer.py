"""First screen of a 1,024-unit layer page in the viewer (target: under 1 s locally, fetching no
more renders than the tiles on screen).

Writes a synthetic atlas (one layer of 1,024 units, 128 px channel renders and a units table,
through the real writer and publish), serves it with the real viewer on 127.0.0.1, and opens the
layer page in headless Chromium (Debian's /usr/bin/chromium via Playwright). Reports the time
from navigation to every on-screen tile decoded, as a ratio to the 1 s target, and the render
requests made against the number of tiles on screen. A second load shows the browser cache.

    python benchmarks/viewer.py            # about 30 s on 2 CPU cores
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

UNITS = 1024
SIZE = 128


def synthesize(url: str) -> None:
    import numpy as np
    import pyarrow as pa

    from loupe.storage import AtlasWriter

    writer = AtlasWriter.create(url, config={"benchmark": "viewer"})
    writer.declare_renders("m", "big", "channel", n_units=UNITS, height=SIZE, width=SIZE, units_per_shard=64)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for start in range(0, UNITS, 64):
        units = np.arange(start, start + 64)
        images = np.stack([((np.sin(xx / (2 + u % 13) + u) + 1) * 120 + rng.integers(0, 15, (SIZE, SIZE)))[..., None]
                           .repeat(3, -1).astype(np.uint8) for u in units])
        with writer.item(f"render-{start:05d}") as out:
            out.write_renders("m", "big", "channel", units.tolist(), images, rng.normal(size=64).astype(np.float32))
            out.write_units("m", "big", pa.table({"unit": pa.array(units.astype(np.int32)),
                                                  "max_max": rng.uniform(0, 5, 64)}))
    writer.publish()
    writer.release()


def main() -> None:
    from playwright.sync_api import sync_playwright

    from loupe.jobs.view import create_app
    from tests.view.conftest import CHROMIUM, serving

    with tempfile.TemporaryDirectory(prefix="loupe-bench-viewer-") as tmp:
        url = str(Path(tmp) / "atlas")
        synthesize(url)
        with serving(create_app(url)) as base, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            renders: list[str] = []
            page.on("request", lambda r: renders.append(r.url) if "/render/" in r.url else None)
            for attempt in ("cold", "warm"):
                renders.clear()
                started = time.perf_counter()
                page.goto(f"{base}/m/m/big")
                page.wait_for_function(
                    """() => { const t = Array.from(document.querySelectorAll('.tile img.lazy'))
                         .filter(i => { const r = i.getBoundingClientRect(); return r.bottom > 0 && r.top < innerHeight; });
                       return t.length > 0 && t.every(i => i.src && i.complete && i.naturalWidth > 0); }""")
                seconds = time.perf_counter() - started
                visible = page.evaluate("""() => Array.from(document.querySelectorAll('.tile img.lazy'))
                    .filter(i => { const r = i.getBoundingClientRect(); return r.bottom > 0 && r.top < innerHeight; }).length""")
                shown = page.evaluate("() => document.querySelectorAll('.tile').length")
                print(f"{attempt}: first screen in {seconds:.3f} s ({seconds / 1.0:.2f} x the 1 s target); "
                      f"{len(renders)} render requests for {visible} tiles on screen "
                      f"({shown} tiles on this page of {UNITS} units)")
            browser.close()


if __name__ == "__main__":
    main()
