"""Notebook display of atlas contents: a unit or a layer grid as self-contained HTML (images inlined
as PNG data URIs), so `atlas.unit(...)` shows itself in Jupyter with nothing else installed.

The same PNG encoding serves the web viewer (loupe.jobs.view), so a picture looks the same in both.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from loupe.storage.reader import Atlas


def png(pixels: np.ndarray) -> bytes:
    """Encode a uint8 H x W x 3 (or x 4) array as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(pixels: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png(pixels)).decode("ascii")


def _img(pixels: np.ndarray, title: str, size: int) -> str:
    return (f'<img src="{data_uri(pixels)}" title="{html.escape(title)}" width="{size}" height="{size}" '
            'style="image-rendering:auto;margin:2px">')


def _number(value: object) -> str:
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.4g}"
    return html.escape(str(value))


@dataclass(frozen=True)
class UnitView:
    """One unit of an atlas version: renders of every kind, top/bottom examples, statistics."""

    model: str
    layer: str
    unit: int
    renders: dict[str, np.ndarray]  # kind -> uint8 [H, W, 3] or [S, H, W, 3]
    examples: dict[str, np.ndarray] = field(default_factory=dict)  # "top"/"bottom" -> uint8 [k, P, P, 3]
    stats: dict = field(default_factory=dict)

    def _repr_html_(self) -> str:
        parts = [f"<div><h4>{html.escape(self.model)} / {html.escape(self.layer)} / unit {self.unit}"
                 + (f" — {html.escape(str(self.stats['label']))}" if self.stats.get("label") else "") + "</h4>"]
        for kind, pixels in self.renders.items():
            images = pixels if pixels.ndim == 4 else pixels[None]
            parts.append(f"<div><b>{html.escape(kind)}</b><br>"
                         + "".join(_img(p, f"{kind} render", 128) for p in images) + "</div>")
        for kind, pictures in self.examples.items():
            filled = [p for p in pictures if p.any()]
            parts.append(f"<div><b>{kind} examples</b><br>" + "".join(_img(p, f"{kind} {i}", 80)
                                                                       for i, p in enumerate(filled)) + "</div>")
        if self.stats:
            rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_number(v)}</td></tr>" for k, v in self.stats.items()
                           if k != "unit")
            parts.append(f"<table>{rows}</table>")
        return "".join(parts) + "</div>"


@dataclass(frozen=True)
class LayerView:
    """A layer's renders of one kind as a grid (units in order)."""

    model: str
    layer: str
    kind: str
    units: np.ndarray
    images: np.ndarray  # uint8 [n, H, W, 3] (first sample of multi-sample kinds)

    def _repr_html_(self) -> str:
        tiles = "".join(f'<figure style="display:inline-block;margin:2px;text-align:center">'
                        f'{_img(img, f"unit {u}", 96)}<figcaption style="font-size:10px">{u}</figcaption></figure>'
                        for u, img in zip(self.units.tolist(), self.images))
        return (f"<div><h4>{html.escape(self.model)} / {html.escape(self.layer)} — {html.escape(self.kind)} "
                f"renders ({len(self.units)} units)</h4>{tiles}</div>")


def unit_view(atlas: "Atlas", model: str, layer: str, unit: int) -> UnitView:
    from loupe.storage.errors import StorageError

    if unit not in atlas.units(model, layer):
        raise StorageError(f"atlas {atlas.url} version {atlas.version}: {model}/{layer} has no unit {unit}")
    renders = {}
    for kind in atlas.kinds(model, layer):
        if unit in atlas.render_units(model, layer, kind):
            renders[kind] = atlas.render(model, layer, unit, kind)
    examples, stats = {}, {}
    try:
        stats = atlas.stats(model, layer, unit)
    except StorageError:
        pass
    for kind in ("top", "bottom"):
        if kind in atlas.example_kinds(model, layer):
            examples[kind] = atlas.example_pictures(model, layer, unit, kind).pictures
    return UnitView(model, layer, int(unit), renders, examples, stats)


def layer_view(atlas: "Atlas", model: str, layer: str, kind: str = "channel") -> LayerView:
    units, images = atlas.layer_renders(model, layer, kind)
    if images.ndim == 5:
        images = images[:, 0]
    return LayerView(model, layer, kind, units, images)
