"""Parquet tables: units, examples, samples and histograms hive-partitioned by model and layer, and an images table.

Each work item writes its own part file named by its key, so repeating an item replaces the file
with identical bytes instead of appending duplicate rows. model and layer live only in the
partition directories (model=.../layer=...), as pyarrow.dataset's hive partitioning expects.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from loupe.storage.errors import StorageError

UNITS = "units"
EXAMPLES = "examples"
IMAGES = "images"
SAMPLES = "samples"
HISTOGRAMS = "histograms"
TABLES = (UNITS, EXAMPLES, IMAGES, SAMPLES, HISTOGRAMS)
PER_UNIT = (UNITS, EXAMPLES, SAMPLES, HISTOGRAMS)
PARTITION_COLUMNS = ("model", "layer")


def prepare(table: pa.Table, name: str, model: str | None, layer: str | None, where: str) -> pa.Table:
    """Check required columns and drop partition columns that merely repeat model and layer."""
    if not isinstance(table, pa.Table):
        raise StorageError(f"{where}: expected a pyarrow.Table, got {type(table).__name__}")
    required = {"unit"} if name in PER_UNIT else {"image_id", "uri"}
    missing = required - set(table.column_names)
    if missing:
        raise StorageError(f"{where}: {name} table is missing column(s) {sorted(missing)}")
    if name in PER_UNIT and not pa.types.is_integer(table.schema.field("unit").type):
        raise StorageError(f"{where}: column 'unit' must be integers, got {table.schema.field('unit').type}")
    for column, expected in zip(PARTITION_COLUMNS, (model, layer)):
        if column in table.column_names:
            values = set(table.column(column).to_pylist())
            if expected is None or values - {expected}:
                raise StorageError(f"{where}: column {column!r} holds {sorted(map(str, values))}, expected only {expected!r}")
            table = table.drop_columns([column])
    return table.replace_schema_metadata(None)


def encode(table: pa.Table) -> bytes:
    """Deterministic Parquet bytes (same table and library version give the same bytes)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", write_statistics=True, store_schema=True)
    return sink.getvalue()


def decode(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))


def unit_range(table: pa.Table) -> list[int]:
    if "unit" not in table.column_names or table.num_rows == 0:
        return []
    return sorted(set(int(u) for u in table.column("unit").to_pylist()))
