"""A saved, ordered list of a dataset's images: stable ids, where each image lives, and shards.

Listing a prefix of a million objects takes minutes on S3, so it is done once by whoever plans a
scan; shards take slices of the saved listing instead of listing again. Every image has a
position (its index in the listing, which never changes for that listing) and a key (the rank of
its id among all ids), which scans use to break ties between equal activations by image id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loupe.pipeline.data.errors import DatasetError

FOLDER = "folder"
PARQUET = "parquet"
KINDS = (FOLDER, PARQUET)
LISTING_FORMAT = 1
_METADATA_KEY = b"loupe.listing"
MAX_IMAGES = 2**32 - 1  # keys must fit 32 bits: scans pack them beside the activation value


@dataclass(frozen=True, eq=False)
class Listing:
    """An ordered slice `[start, start + len)` of a dataset's full listing.

    `table` has one row per image: `id` (string), `key` (int64 rank of the id among all ids) and
    the location: `path` relative to `root` for folders, `file` (index into `files`) and `row` for
    Parquet tables. `fingerprint` identifies the full listing, so results computed from different
    listings are never merged by mistake.
    """

    kind: str
    root: str
    table: pa.Table
    fingerprint: str
    start: int = 0
    total: int = -1
    files: tuple[str, ...] = ()
    image_column: str | None = None
    id_column: str | None = None
    ignored: int = 0
    ignored_examples: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DatasetError(f"listing kind must be one of {KINDS}, got {self.kind!r}")
        if self.total < 0:
            object.__setattr__(self, "total", self.start + self.table.num_rows)
        if not 0 <= self.start <= self.start + self.table.num_rows <= self.total:
            raise DatasetError(
                f"listing slice [{self.start}, {self.start + self.table.num_rows}) lies outside its {self.total} images"
            )

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        kind: str,
        root: str,
        ids: Sequence[str] | pa.Array,
        locations: Mapping[str, Sequence | np.ndarray | pa.Array],
        **fields: Any,
    ) -> "Listing":
        """A full listing from ids (in scan order) and their locations; checks ids are unique."""
        ids = pa.array(ids, type=pa.string()) if not isinstance(ids, pa.Array) else ids.cast(pa.string())
        if len(ids) > MAX_IMAGES:
            raise DatasetError(f"dataset {root} has {len(ids)} images; one listing holds at most {MAX_IMAGES}")
        if ids.null_count:
            raise DatasetError(f"dataset {root}: {ids.null_count} image id(s) are null")
        order = pc.sort_indices(ids).to_numpy()
        keys = np.empty(len(ids), dtype=np.int64)
        keys[order] = np.arange(len(ids), dtype=np.int64)
        sorted_ids = ids.take(pa.array(order))
        if len(ids) > 1:
            same = pc.equal(sorted_ids.slice(1), sorted_ids.slice(0, len(ids) - 1)).to_numpy(zero_copy_only=False)
            if same.any():
                first = int(np.argmax(same))
                dup = sorted_ids[first].as_py()
                where = [int(i) for i in np.flatnonzero(np.asarray(ids.to_pylist(), dtype=object) == dup)[:2]]
                raise DatasetError(
                    f"dataset {root}: image id {dup!r} appears more than once (positions {where}); "
                    "ids must be unique (choose an id column with unique values)"
                )
        columns = {"id": ids, "key": pa.array(keys)}
        columns.update({name: pa.array(values) for name, values in locations.items()})
        table = pa.table(columns)
        return cls(kind=kind, root=root, table=table, fingerprint=_fingerprint(kind, root, table), **fields)

    # ---- basic access -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.table.num_rows

    def __repr__(self) -> str:
        return (
            f"Listing({self.kind} {self.root!r}: images [{self.start}, {self.stop}) of {self.total}, "
            f"fingerprint {self.fingerprint[:12]})"
        )

    @property
    def stop(self) -> int:
        return self.start + len(self)

    @property
    def positions(self) -> np.ndarray:
        """Global position of every image in this slice."""
        return np.arange(self.start, self.stop, dtype=np.int64)

    @property
    def keys(self) -> np.ndarray:
        return self.table.column("key").to_numpy()

    def ids(self, local: Sequence[int] | np.ndarray | None = None) -> list[str]:
        """Ids of all images in this slice, or of the given local offsets."""
        column = self.table.column("id")
        if local is None:
            return column.to_pylist()
        return column.take(pa.array(np.asarray(local, dtype=np.int64))).to_pylist()

    def uris(self, local: Sequence[int] | np.ndarray | None = None) -> list[str]:
        """Where each image lives: a file URL, or `table.parquet#row=N` for Parquet sources."""
        return self.uri_array(local).to_pylist()

    def uri_array(self, local: Sequence[int] | np.ndarray | None = None) -> pa.ChunkedArray:
        """`uris` as an Arrow string array, built by Arrow kernels: no Python string per image, so a
        1.28M-image listing costs its Arrow buffers, not a list of Python objects."""
        table = self.table if local is None else self.table.take(pa.array(np.asarray(local, dtype=np.int64)))
        root = self.root.rstrip("/")
        if self.kind == FOLDER:
            return pc.binary_join_element_wise(pa.scalar(root), table.column("path").cast(pa.string()), "/")
        files = pa.array([_join(root, name) for name in self.files], type=pa.string())
        per_image = pc.take(files, table.column("file"))
        return pc.binary_join_element_wise(per_image, table.column("row").cast(pa.string()), "#row=")

    def images_table(self) -> pa.Table:
        """image_index, image_id, uri: what an atlas records to find each scanned image again."""
        return pa.table(
            {
                "image_index": pa.array(self.positions),
                "image_id": self.table.column("id"),
                "uri": self.uri_array(),
            }
        )

    # ---- shards -------------------------------------------------------------------------------
    def slice(self, start: int, stop: int) -> "Listing":
        """The images at global positions [start, stop), which must lie inside this listing."""
        if not (self.start <= start <= stop <= self.stop):
            raise DatasetError(
                f"cannot take images [{start}, {stop}) from a listing holding [{self.start}, {self.stop})"
            )
        table = _compact(self.table.slice(start - self.start, stop - start))
        return replace(self, table=table, start=start)

    def shard(self, count: int, index: int, *, align: int = 1) -> "Listing":
        """Shard `index` of `count` contiguous, disjoint shards that together cover this listing.

        With `align`, shard boundaries fall on global positions that are multiples of `align`
        (e.g. the activation arrays' images per chunk), so no two shards write the same chunk.
        """
        bounds = shard_bounds(self.start, self.stop, count, align)
        if not isinstance(index, (int, np.integer)) or not 0 <= index < count:
            raise DatasetError(f"shard index must be in 0..{count - 1}, got {index!r}")
        return self.slice(bounds[index], bounds[index + 1])

    def shards(self, count: int, *, align: int = 1) -> list["Listing"]:
        bounds = shard_bounds(self.start, self.stop, count, align)
        return [self.slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    # ---- plain-table form ----------------------------------------------------------------------
    def to_table(self) -> pa.Table:
        """This listing as one Arrow table: its rows, and every other field as JSON schema metadata.

        Whoever saves it chooses where the bytes go (a build saves it through the atlas store).
        """
        meta = {
            "format": LISTING_FORMAT,
            "kind": self.kind,
            "root": self.root,
            "fingerprint": self.fingerprint,
            "start": self.start,
            "total": self.total,
            "files": list(self.files),
            "image_column": self.image_column,
            "id_column": self.id_column,
            "ignored": self.ignored,
            "ignored_examples": list(self.ignored_examples),
        }
        return self.table.replace_schema_metadata({_METADATA_KEY: json.dumps(meta).encode()})

    @classmethod
    def from_table(cls, table: pa.Table, where: str) -> "Listing":
        """The listing `to_table` made; errors name `where` (e.g. the object it was read from)."""
        raw = (table.schema.metadata or {}).get(_METADATA_KEY)
        if raw is None:
            raise DatasetError(f"{where} is a table but not a Loupe listing (no {_METADATA_KEY.decode()} metadata)")
        try:
            meta = json.loads(raw)
        except ValueError as exc:
            raise DatasetError(f"listing {where} has unreadable metadata: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != LISTING_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else meta
            raise DatasetError(f"listing {where} has format {found!r}, this Loupe reads {LISTING_FORMAT}")
        table = table.replace_schema_metadata(None)
        _check_columns(table, meta.get("kind"), where)
        try:
            return cls(
                kind=meta["kind"], root=str(meta["root"]), table=table, fingerprint=str(meta["fingerprint"]),
                start=int(meta["start"]), total=int(meta["total"]), files=tuple(map(str, meta["files"])),
                image_column=meta["image_column"], id_column=meta["id_column"], ignored=int(meta["ignored"]),
                ignored_examples=tuple(map(str, meta["ignored_examples"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"listing {where} has incomplete metadata ({type(exc).__name__}: {exc})") from None


def shard_bounds(start: int, stop: int, count: int, align: int = 1) -> list[int]:
    """`count + 1` increasing boundaries from start to stop, inner ones on multiples of `align`."""
    if not isinstance(count, (int, np.integer)) or count < 1:
        raise DatasetError(f"shard count must be a positive integer, got {count!r}")
    if not isinstance(align, (int, np.integer)) or align < 1:
        raise DatasetError(f"shard align must be a positive integer, got {align!r}")
    cuts = list(range((start // align + 1) * align, stop, align))
    pieces = [start, *cuts, stop] if stop > start else [start, stop]
    n_pieces = len(pieces) - 1
    return [pieces[(i * n_pieces) // count] for i in range(count)] + [stop]


_COLUMNS = {
    FOLDER: {"id": pa.types.is_string, "key": pa.types.is_int64, "path": pa.types.is_string},
    PARQUET: {"id": pa.types.is_string, "key": pa.types.is_int64, "file": pa.types.is_integer, "row": pa.types.is_integer},
}


def _check_columns(table: pa.Table, kind: str | None, where: str) -> None:
    """A listing read back must have exactly the columns its kind needs, with the right types."""
    if kind not in _COLUMNS:
        raise DatasetError(f"listing {where} has kind {kind!r}; expected one of {KINDS}")
    for name, is_type in _COLUMNS[kind].items():
        if name not in table.column_names:
            raise DatasetError(f"listing {where} has no {name!r} column (it has {table.column_names})")
        if not is_type(table.schema.field(name).type):
            raise DatasetError(f"listing {where}: column {name!r} has type {table.schema.field(name).type}")


def _compact(table: pa.Table) -> pa.Table:
    """A copy holding only its own rows: pickling a zero-copy slice would ship the whole listing."""
    return table.take(pa.array(np.arange(table.num_rows, dtype=np.int64)))


def _fingerprint(kind: str, root: str, table: pa.Table) -> str:
    digest = hashlib.sha256(f"{kind}\n{root}\n".encode())
    for name in table.column_names:
        if name == "key":
            continue
        digest.update(name.encode() + b"\0")
        digest.update("\0".join(map(str, table.column(name).to_pylist())).encode() + b"\1")
    return digest.hexdigest()


def _join(root: str, relative: str) -> str:
    return root if not relative else f"{root}/{relative}"
