"""The viewer's web app (Starlette): HTML pages, a JSON + PNG API, and error pages that name the culprit.

    /                              atlas home: versions, models, layers
    /m/<model>/<layer>             layer grid (?v=version&kind=channel&sort=unit&desc=1&page=2)
    /m/<model>/<layer>/<unit>      unit page (?v=version)
    /api/atlas                     versions, models, layers, counts
    /api/m/<model>/<layer>         units-table rows and render kinds
    /api/m/<model>/<layer>/<unit>  one unit: statistics, scores, examples, samples, histogram, image URLs
    /img/<version>/...             PNGs: renders, example pictures, heat-map overlays (immutable)

A URL without `v` shows the current version; every image URL names its version, so images are
cached forever (`immutable`) and JSON is revalidated by ETag. The app never writes to the atlas.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from loupe.jobs.view import images
from loupe.jobs.view.columns import MEANINGS
from loupe.jobs.view.source import AtlasSource
from loupe.jobs.view.unit_data import basis_links, clean, describe_basis, layer_grid, unit_page, units_rows
from loupe.storage import Atlas, ChecksumError, MissingObjectError, RangeReadError, StorageError
from loupe.storage.layout import split_layer_key

HERE = Path(__file__).parent
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
#: Errors that mean stored data is damaged (a tile shows an error), not that a name is unknown.
DAMAGED = (ChecksumError, MissingObjectError, RangeReadError)


def create_app(url: str, *, version: str | None = None, storage_options: Mapping[str, Any] | None = None,
               ranged_reads: bool = True) -> Starlette:
    """The viewer for the atlas at `url`; `version` pins the version shown when a URL names none."""
    source = AtlasSource(url, storage_options, ranged_reads=ranged_reads)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["num"] = _format_number
    default_version = version

    def atlas_for(request: Request) -> Atlas:
        return source.atlas(request.query_params.get("v") or default_version)

    def page(request: Request, name: str, context: dict, status: int = 200) -> HTMLResponse:
        opened = context.get("atlas")
        query = f"?v={opened.version}" if opened is not None and request.query_params.get("v") else ""
        return templates.TemplateResponse(request, name, {"url": url, "vq": query, **context}, status_code=status)

    async def home(request: Request) -> HTMLResponse:
        atlas = atlas_for(request)
        versions = source.versions()
        models = {m: [(key, describe_basis(atlas.basis(m, *split_layer_key(key))), len(atlas.units(m, key)),
                       atlas.kinds(m, key)) for key in sorted(atlas.layer_keys(m), key=_natural)]
                  for m in atlas.models()}
        return page(request, "home.html", {"atlas": atlas, "versions": versions, "models": models,
                                           "info": atlas.manifest})

    async def model_page(request: Request) -> Response:
        atlas = atlas_for(request)
        model = request.path_params["model"]
        layers = sorted(atlas.layer_keys(model), key=_natural)  # names the model when unknown
        return RedirectResponse(f"/m/{model}/{layers[0]}{_query(request)}" if layers else "/", status_code=302)

    async def layer_page(request: Request) -> HTMLResponse:
        atlas = atlas_for(request)
        params = request.query_params
        grid = layer_grid(atlas, request.path_params["model"], request.path_params["layer"],
                          kind=params.get("kind"), sort=params.get("sort", "unit"),
                          descending=params.get("desc") == "1", page=_int(params.get("page", "1"), "page"))
        return page(request, "layer.html", {"atlas": atlas, "grid": grid,
                                             "bases": basis_links(atlas, grid.model, grid.layer)})

    async def unit_view(request: Request) -> HTMLResponse:
        atlas = atlas_for(request)
        model, layer = request.path_params["model"], request.path_params["layer"]
        data = unit_page(atlas, model, layer, _int(request.path_params["unit"], "unit"))
        others = [v.version for v in source.versions().complete if v.version != atlas.version]
        return page(request, "unit.html", {"atlas": atlas, "u": data, "meanings": MEANINGS, "others": others,
                                           "bases": basis_links(atlas, model, layer)})

    # ---- JSON API -------------------------------------------------------------------------
    async def api_atlas(request: Request) -> Response:
        atlas = atlas_for(request)
        versions = source.versions()
        body = {
            "url": url, "version": atlas.version, "current": versions.current,
            "versions": [{"version": v.version, "status": str(v.status), "created_at": v.created_at,
                          "config_sha256": v.config_sha256} for v in versions.complete],
            "models": {m: {key: {"layer": split_layer_key(key)[0], "basis": split_layer_key(key)[1],
                                 "units": len(atlas.units(m, key)), "kinds": atlas.kinds(m, key)}
                           for key in atlas.layer_keys(m)} for m in atlas.models()},
        }
        return _json(request, body, immutable=False)

    async def api_layer(request: Request) -> Response:
        atlas = atlas_for(request)
        model, layer = request.path_params["model"], request.path_params["layer"]
        body = {"version": atlas.version, "model": model, "layer": layer, "kinds": atlas.kinds(model, layer),
                "units": units_rows(atlas, model, layer), "rendered": {k: atlas.render_units(model, layer, k)
                                                                        for k in atlas.kinds(model, layer)}}
        return _json(request, body, immutable="v" in request.query_params)

    async def api_unit(request: Request) -> Response:
        atlas = atlas_for(request)
        model, layer = request.path_params["model"], request.path_params["layer"]
        data = unit_page(atlas, model, layer, _int(request.path_params["unit"], "unit"))
        base = f"/img/{atlas.version}"
        body = {
            "version": atlas.version, "model": model, "layer": layer, "unit": data.unit,
            "stats": data.stats, "previous": data.previous, "next": data.next,
            "renders": {kind: [f"{base}/render/{model}/{layer}/{kind}/{data.unit}.png" + (f"?sample={i}" if n > 1 else "")
                               for i in range(n)] for kind, n in data.kinds.items()},
            "examples": {kind: [{**row, "picture": f"{base}/example/{model}/{layer}/{kind}/{data.unit}/{row['rank']}.png",
                                 "heatmap": f"{base}/heatmap/{model}/{layer}/{kind}/{data.unit}/{row['rank']}.png"}
                                for row in rows] for kind, rows in data.examples.items()},
            "samples": [{**row, "picture": f"{base}/example/{model}/{layer}/samples/{data.unit}/{row['picture']}.png"}
                        for row in data.samples],
            "histogram": data.histogram,
        }
        return _json(request, body, immutable="v" in request.query_params)

    # ---- images -----------------------------------------------------------------------------
    async def render_png(request: Request) -> Response:
        p = request.path_params
        atlas = source.atlas(p["version"])
        pixels = atlas.render(p["model"], p["layer"], _int(p["unit"], "unit"), p["kind"])
        if pixels.ndim == 4:
            sample = _int(request.query_params.get("sample", "0"), "sample")
            if not 0 <= sample < len(pixels):
                raise StorageError(f"render {p['kind']} of unit {p['unit']} has {len(pixels)} samples, not {sample + 1}")
            pixels = pixels[sample]
        return _png(request, lambda: images.png(pixels))

    async def example_png(request: Request) -> Response:
        p = request.path_params
        atlas = source.atlas(p["version"])
        stored = atlas.example_pictures(p["model"], p["layer"], _int(p["unit"], "unit"), p["kind"])
        slot = _slot(stored.pictures, p["slot"])
        return _png(request, lambda: images.png(stored.pictures[slot]))

    async def heatmap_png(request: Request) -> Response:
        p = request.path_params
        atlas = source.atlas(p["version"])
        unit = _int(p["unit"], "unit")
        stored = atlas.example_pictures(p["model"], p["layer"], unit, p["kind"])
        slot = _slot(stored.heatmaps, p["slot"])
        scale = float(atlas.stats(p["model"], p["layer"], unit).get("max_max") or 0.0)
        size = stored.pictures.shape[1]
        return _png(request, lambda: images.heatmap_png(stored.heatmaps[slot], scale, size))

    # ---- errors -----------------------------------------------------------------------------
    async def storage_error(request: Request, exc: Exception) -> Response:
        status = 500 if isinstance(exc, DAMAGED) else 404
        title = "damaged object" if status == 500 else "not found"
        if request.url.path.startswith(("/api/", "/img/")):
            return JSONResponse({"error": title, "detail": str(exc)}, status_code=status)
        return templates.TemplateResponse(request, "error.html", {"url": url, "vq": "", "title": title,
                                                                  "detail": str(exc)}, status_code=status)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        detail = exc.detail if exc.status_code != 404 else f"no page at {request.url.path}"
        if request.url.path.startswith(("/api/", "/img/")):
            return JSONResponse({"error": "not found", "detail": detail}, status_code=exc.status_code)
        return templates.TemplateResponse(request, "error.html", {"url": url, "vq": "", "title": "not found",
                                                                  "detail": detail}, status_code=exc.status_code)

    routes = [
        Route("/", home),
        Route("/m/{model}", model_page),
        Route("/m/{model}/{layer}", layer_page),
        Route("/m/{model}/{layer}/{unit}", unit_view),
        Route("/api/atlas", api_atlas),
        Route("/api/m/{model}/{layer}", api_layer),
        Route("/api/m/{model}/{layer}/{unit}", api_unit),
        Route("/img/{version}/render/{model}/{layer}/{kind}/{unit}.png", render_png),
        Route("/img/{version}/example/{model}/{layer}/{kind}/{unit}/{slot}.png", example_png),
        Route("/img/{version}/heatmap/{model}/{layer}/{kind}/{unit}/{slot}.png", heatmap_png),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    handlers = {StorageError: storage_error, HTTPException: http_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.source = source
    return app


class BadParameter(StorageError):
    """A URL parameter that is not what the page expects (e.g. a unit that is not a number)."""


def _natural(name: str) -> list:
    """Sort key that puts features.3 before features.14."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadParameter(f"{name} must be a whole number, got {value!r}") from None


def _slot(array: np.ndarray, value: str) -> int:
    slot = _int(value, "slot")
    if not 0 <= slot < array.shape[0]:
        raise BadParameter(f"slot {slot} is outside the {array.shape[0]} stored pictures")
    return slot


def _query(request: Request) -> str:
    return f"?{request.url.query}" if request.url.query else ""


def _etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def _cached(request: Request, body: bytes, media_type: str, immutable: bool) -> Response:
    tag = _etag(body)
    headers = {"ETag": tag, "Cache-Control": IMMUTABLE if immutable else REVALIDATE}
    if request.headers.get("if-none-match") == tag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


def _json(request: Request, body: dict, *, immutable: bool) -> Response:
    data = json.dumps(body, default=_plain, allow_nan=False, separators=(",", ":")).encode()
    return _cached(request, data, "application/json", immutable)


def _png(request: Request, encode: Callable[[], bytes]) -> Response:
    """Image URLs name an immutable version: the bytes never change, so they are cached forever."""
    return _cached(request, encode(), "image/png", immutable=True)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return clean(value.item())
    return str(value)


def _format_number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
