"""What a layer grid and a unit page show, gathered from one atlas version as plain values.

Pages and the JSON API use the same functions, so both always agree. Nothing here reads more
than the page needs: a layer grid reads the units table (one row per unit), a unit page reads
its own rows of the examples, samples and histogram tables and the pictures by URL later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from loupe.jobs.view.columns import SORTABLE
from loupe.storage import Atlas, StorageError
from loupe.storage.layout import CHANNELS, layer_key, split_layer_key
from loupe.storage.manifest import to_ranges
from loupe.storage.reader import BasisInfo

#: Units shown per page of a layer grid.
PAGE_UNITS = 96


def clean(value: Any) -> Any:
    """JSON-safe scalars: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _rows(table: pa.Table | None) -> list[dict]:
    if table is None:
        return []
    return [{k: clean(v) for k, v in row.items()} for row in table.to_pylist()]


def units_rows(atlas: Atlas, model: str, layer: str) -> list[dict]:
    """One row per unit with its statistics and scores; [] when the layer has no units table."""
    try:
        return _rows(atlas.units_table(model, layer))
    except StorageError:
        if not atlas.kinds(model, layer):
            raise
        return []


@dataclass(frozen=True)
class BasisLink:
    """One basis of a layer, for the switcher on layer and unit pages."""

    name: str
    key: str  # the layer key in URLs: `layer` or `layer@basis`
    label: str
    current: bool


def describe_basis(info: BasisInfo) -> str:
    """`channels`, or e.g. `sae: 64 SAE latents (topk, k=8)` / `pca: 10 directions`."""
    if info.kind == CHANNELS:
        return CHANNELS
    if info.kind == "sae":
        how = f"{info.activation}, k={info.k}" if info.k else (info.activation or "")
        return f"{info.name}: {info.units} SAE latents ({how})"
    return f"{info.name}: {info.units} directions"


def basis_links(atlas: Atlas, model: str, key: str) -> list[BasisLink]:
    """Every basis the layer of `key` was built in, the one `key` names marked current."""
    layer, current = split_layer_key(key)
    return [BasisLink(name, layer_key(layer, name), describe_basis(atlas.basis(model, layer, name)), name == current)
            for name in atlas.bases(model, layer)]


@dataclass(frozen=True)
class LayerGrid:
    model: str
    layer: str
    kind: str | None
    kinds: list[str]
    units: list[int]  # this page's units, in display order
    rows: dict[int, dict]  # unit -> its units-table row
    rendered: set[int]
    sort: str
    descending: bool
    page: int
    pages: int
    total: int
    sortable: list[str] = field(default_factory=list)


def layer_grid(atlas: Atlas, model: str, layer: str, *, kind: str | None = None, sort: str = "unit",
               descending: bool = False, page: int = 1) -> LayerGrid:
    """The units of one page of a layer, sorted by unit index or a score column (missing values last)."""
    kinds = atlas.kinds(model, layer)
    if kind is not None and kind not in kinds:
        raise StorageError(f"atlas {atlas.url}: no {kind!r} renders for {model}/{layer}; kinds: {kinds}")
    kind = kind or ("channel" if "channel" in kinds else (kinds[0] if kinds else None))
    rows = {int(r["unit"]): r for r in units_rows(atlas, model, layer)}
    units = sorted(set(atlas.units(model, layer)) | set(rows))
    sortable = [c for c in SORTABLE if any(r.get(c) is not None for r in rows.values())]
    if sort != "unit":
        if sort not in sortable:
            raise StorageError(f"cannot sort {model}/{layer} by {sort!r}; choose unit or one of {sortable}")
        present = [u for u in units if rows.get(u, {}).get(sort) is not None]
        missing = [u for u in units if rows.get(u, {}).get(sort) is None]
        units = sorted(present, key=lambda u: rows[u][sort], reverse=descending) + missing
    elif descending:
        units = units[::-1]
    pages = max(1, math.ceil(len(units) / PAGE_UNITS))
    if not 1 <= page <= pages:
        raise StorageError(f"{model}/{layer} has {pages} page(s) of units; there is no page {page}")
    rendered = set()
    if kind is not None:
        rendered = set(atlas.render_units(model, layer, kind))
    shown = units[(page - 1) * PAGE_UNITS:page * PAGE_UNITS]
    return LayerGrid(model, layer, kind, kinds, shown, rows, rendered, sort, descending, page, pages, len(units),
                     sortable)


@dataclass(frozen=True)
class UnitPage:
    model: str
    layer: str
    unit: int
    stats: dict
    kinds: dict[str, int]  # render kind -> images per unit (1, or the diversity set's size)
    examples: dict[str, list[dict]]  # "top"/"bottom" -> rows by rank
    samples: list[dict]  # band samples, by band then slot
    bands: list[dict]  # band edges and counts
    histogram: list[dict]
    example_kinds: list[str]
    previous: int | None
    next: int | None
    heat_scale: float


def unit_page(atlas: Atlas, model: str, layer: str, unit: int) -> UnitPage:
    """Everything one unit's page shows except pixels (those are fetched by URL)."""
    all_units = sorted(set(atlas.units(model, layer)))
    if unit not in all_units:
        raise StorageError(f"atlas {atlas.url} version {atlas.version}: {model}/{layer} has no unit {unit} "
                           f"(units {_ranges(all_units)})")
    position = all_units.index(unit)
    stats: dict = {}
    try:
        stats = {k: clean(v) for k, v in atlas.stats(model, layer, unit).items()}
    except StorageError:
        pass
    kinds = {kind: atlas.render_samples(model, layer, kind) for kind in atlas.kinds(model, layer)
             if unit in set(atlas.render_units(model, layer, kind))}
    examples: dict[str, list[dict]] = {"top": [], "bottom": []}
    samples: list[dict] = []
    histogram: list[dict] = []
    example_kinds: list[str] = []
    if stats.get("images") is not None:
        table = atlas.examples(model, layer, unit)
        for row in _rows(table.sort_by([("kind", "descending"), ("rank", "ascending")])):
            examples.setdefault(row["kind"], []).append(row)
        example_kinds = atlas.example_kinds(model, layer)
        if "samples" in example_kinds:
            samples = _rows(atlas.samples(model, layer, unit).sort_by([("band", "ascending"), ("slot", "ascending")]))
            histogram = _rows(atlas.histogram(model, layer, unit))
    bands = _bands(samples)
    scale = max((stats.get("max_max") or 0.0), 0.0)
    return UnitPage(model, layer, unit, stats, kinds, examples, samples, bands, histogram, example_kinds,
                    all_units[position - 1] if position > 0 else None,
                    all_units[position + 1] if position + 1 < len(all_units) else None, scale)


def _bands(samples: list[dict]) -> list[dict]:
    bands: dict[int, dict] = {}
    for row in samples:
        bands.setdefault(row["band"], {"band": row["band"], "low": row["band_low"], "high": row["band_high"],
                                       "samples": []})["samples"].append(row)
    return [bands[b] for b in sorted(bands)]


def _ranges(units: list[int]) -> str:
    if not units:
        return "none"
    return ", ".join(f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in to_ranges(units))
