"""Score items: how a unit's render compares with the unit's natural activations.

    fv_natural_ratio     = fv_activation / max_max   (the dataset's largest per-image max)
    fv_natural_ratio_p99 = fv_activation / max_p99   (its 99th percentile)

`fv_activation` (render items) and `max_max`/`max_p99` (the layer's reduce) use the same
statistic, the spatial max of the unit's channel, so a ratio above 1 means the render drives the
unit harder than any (or 99% of) dataset images. Ratios are NaN where the denominator is not
positive or either side is missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from loupe.jobs.build.plan import ScoreSpec, WorkItem, item_meta
from loupe.storage import tables


def run_score(runner, item: WorkItem) -> dict[str, Any]:
    spec: ScoreSpec = item.spec
    model_id = runner.config.id
    writer = runner.writer
    natural = writer.read_table_part(spec.reduce_item, tables.UNITS, model_id, spec.layer)
    renders = [writer.read_table_part(key, tables.UNITS, model_id, spec.layer) for key in spec.render_items]
    rendered = pa.concat_tables([r.select(["unit", "fv_activation"]) for r in renders])
    with writer.item(item.key, item_meta(item)) as out:
        out.write_units(model_id, spec.layer, natural_ratios(natural, rendered))
    return {}


def natural_ratios(natural: pa.Table, rendered: pa.Table) -> pa.Table:
    """One row per rendered unit: its render activation over the unit's natural max and p99."""
    units = rendered.column("unit").to_numpy(zero_copy_only=False).astype(np.int64)
    activation = rendered.column("fv_activation").to_numpy(zero_copy_only=False).astype(np.float64)
    by_unit = {int(u): i for i, u in enumerate(natural.column("unit").to_pylist())}
    rows = np.array([by_unit.get(int(u), -1) for u in units], dtype=np.int64)

    def ratio(column: str) -> np.ndarray:
        values = natural.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
        denominator = np.where(rows >= 0, values[np.maximum(rows, 0)], np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, activation / denominator, np.nan)

    order = np.argsort(units, kind="stable")
    return pa.table({
        "unit": pa.array(units[order].astype(np.int32)),
        "fv_natural_ratio": pa.array(ratio("max_max")[order]),
        "fv_natural_ratio_p99": pa.array(ratio("max_p99")[order]),
    })
