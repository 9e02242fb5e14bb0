"""List a dataset once: a folder/prefix of image files or Parquet tables of encoded images.

Any fsspec URL works (`/data/val`, `s3://bucket/imagenet/val/`, `gs://...`) with the same
`storage_options` the rest of Loupe takes. Errors (missing folder, no permission, no images,
a Parquet table without an image column) are raised here, before any model work starts.
"""

from __future__ import annotations

import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from loupe.pipeline.data.errors import DatasetError
from loupe.pipeline.data.listing import FOLDER, PARQUET, Listing

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm",
)
PARQUET_EXTENSIONS = (".parquet", ".pq")
FORMATS = ("auto", "images", "parquet")


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `url` and the path inside it, with a clear error for bad URLs."""
    try:
        return fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except (ImportError, ValueError, TypeError) as exc:
        raise DatasetError(f"dataset URL {url!r} cannot be opened: {exc}") from exc


def root_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A URL for `path` that `filesystem` turns back into the same filesystem and path."""
    if is_local_filesystem(fs):
        return os.path.abspath(path)
    return fs.unstrip_protocol(path)


def list_images(
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    format: str = "auto",
    image_column: str | None = None,
    id_column: str | None = None,
    extensions: Sequence[str] | None = IMAGE_EXTENSIONS,
) -> Listing:
    """List every image under `url` in a deterministic order.

    Folders: every file whose extension is in `extensions` (None: every file), id = its path
    relative to `url`, ordered by id. Parquet (a `.parquet` file or a folder of them): one image
    per row of `image_column` (binary, or a struct with a `bytes` field as Hugging Face writes),
    id = `id_column` or `<file>#<row>`, ordered by file then row.
    """
    if format not in FORMATS:
        raise DatasetError(f"dataset format must be one of {FORMATS}, got {format!r}")
    fs, path = filesystem(url, storage_options)
    path = path.rstrip("/") or path
    try:
        is_file = fs.isfile(path)
        is_dir = not is_file and fs.isdir(path)
    except Exception as exc:  # noqa: BLE001 - permissions, credentials, unreachable endpoints
        raise DatasetError(f"cannot open dataset {url}: {exc}") from exc
    if not is_file and not is_dir:
        raise DatasetError(f"dataset {url} does not exist (no such file, folder or prefix)")
    root = root_url(fs, path)
    if is_file:
        if format == "images" or not path.lower().endswith(PARQUET_EXTENSIONS):
            raise DatasetError(
                f"dataset {url} is a single file; give a folder of images or a Parquet table (.parquet)"
            )
        return _list_parquet(fs, posixpath.dirname(path), [path], root_url(fs, posixpath.dirname(path)),
                             image_column, id_column)

    files = _find(fs, path, url)
    relative = [_relative(f, path) for f in files]
    visible = [(f, r) for f, r in zip(files, relative) if not _hidden(r)]
    parquet = [f for f, r in visible if r.lower().endswith(PARQUET_EXTENSIONS)]
    if format == "parquet" or (format == "auto" and parquet and not _any_image(visible, extensions)):
        if not parquet:
            raise DatasetError(f"dataset {url} holds no Parquet files (*.parquet)")
        return _list_parquet(fs, path, parquet, root, image_column, id_column)
    if format == "auto" and parquet:
        raise DatasetError(
            f"dataset {url} holds both image files and Parquet files; pass format='images' or format='parquet'"
        )
    return _list_folder(url, root, visible, len(files) - len(visible), extensions, image_column, id_column)


def _list_folder(url, root, visible, hidden_count, extensions, image_column, id_column) -> Listing:
    if image_column or id_column:
        raise DatasetError(f"dataset {url} is a folder of images: image_column and id_column apply only to Parquet")
    allowed = tuple(e.lower() for e in extensions) if extensions is not None else None
    kept = sorted(r for _, r in visible if allowed is None or r.lower().endswith(allowed))
    ignored = sorted(r for _, r in visible if allowed is not None and not r.lower().endswith(allowed))
    if not kept:
        raise DatasetError(
            f"dataset {url} holds no image files"
            + (f" with extensions {', '.join(allowed)}" if allowed else "")
            + (f" ({len(ignored)} other files, e.g. {ignored[0]})" if ignored else "")
        )
    return Listing.build(
        FOLDER, root, kept, {"path": pa.array(kept, type=pa.string())},
        ignored=len(ignored) + hidden_count, ignored_examples=tuple(ignored[:5]),
    )


def _list_parquet(fs, base: str, files: list[str], root: str, image_column, id_column) -> Listing:
    files = sorted(files)
    relative = [_relative(f, base) for f in files]
    ids: list[pa.Array] = []
    file_index: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    chosen_image_column = image_column
    for number, (full, rel) in enumerate(zip(files, relative)):
        try:
            with fs.open(full, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                schema = parquet.schema_arrow
                column = _image_column(schema, image_column, full)
                if chosen_image_column is None:
                    chosen_image_column = column
                elif column != chosen_image_column:
                    raise DatasetError(
                        f"Parquet file {full} stores images in column {column!r} but earlier files use "
                        f"{chosen_image_column!r}; pass image_column"
                    )
                count = parquet.metadata.num_rows
                if id_column is not None:
                    if id_column not in schema.names:
                        raise DatasetError(
                            f"Parquet file {full} has no id column {id_column!r} (columns: {', '.join(schema.names)})"
                        )
                    values = parquet.read(columns=[id_column]).column(id_column).combine_chunks()
                    ids.append(values.cast(pa.string()))
                else:
                    ids.append(pa.array([f"{rel}#{r}" for r in range(count)], type=pa.string()))
        except DatasetError:
            raise
        except Exception as exc:  # noqa: BLE001 - unreadable footer, permissions, not Parquet at all
            raise DatasetError(f"cannot read Parquet file {full}: {exc}") from exc
        file_index.append(np.full(count, number, dtype=np.int32))
        rows.append(np.arange(count, dtype=np.int64))
    all_ids = pa.concat_arrays(ids) if ids else pa.array([], type=pa.string())
    if len(all_ids) == 0:
        raise DatasetError(f"dataset {root} holds no rows in its Parquet files")
    if all_ids.null_count:
        raise DatasetError(f"dataset {root}: id column {id_column!r} has {all_ids.null_count} null value(s)")
    return Listing.build(
        PARQUET, root, all_ids,
        {"file": np.concatenate(file_index), "row": np.concatenate(rows)},
        files=tuple(relative), image_column=chosen_image_column, id_column=id_column,
    )


def _image_column(schema: pa.Schema, requested: str | None, where: str) -> str:
    """The column holding encoded images: the requested one, or the only binary-like column."""
    if requested is not None:
        if requested not in schema.names:
            raise DatasetError(f"Parquet file {where} has no image column {requested!r} (columns: {', '.join(schema.names)})")
        if not is_image_field(schema.field(requested).type):
            raise DatasetError(
                f"Parquet file {where}: column {requested!r} is {schema.field(requested).type}, "
                "not binary image bytes (or a struct with a 'bytes' field)"
            )
        return requested
    candidates = [f.name for f in schema if is_image_field(f.type)]
    if len(candidates) != 1:
        found = ", ".join(candidates) if candidates else "none"
        raise DatasetError(
            f"Parquet file {where}: cannot tell which column holds the images (binary columns: {found}); pass image_column"
        )
    return candidates[0]


def is_image_field(kind: pa.DataType) -> bool:
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return True
    if pa.types.is_struct(kind):
        index = kind.get_field_index("bytes")
        return index >= 0 and is_image_field(kind.field(index).type)
    return False


#: Top-level folders listed at once. An object store lists one prefix page by page (1,000 keys a
#: request, each waiting for the last), so ImageNet's 1.28M keys are ~1,300 requests in a row;
#: its 1,000 class folders listed side by side take a fraction of that.
LISTING_THREADS = 16


def _find(fs, path: str, url: str) -> list[str]:
    """Every file under `path`: the top level once, then each top-level folder concurrently."""
    try:
        top = fs.ls(path, detail=True)
        folders = [entry["name"] for entry in top if entry.get("type") == "directory"]
        files = [entry["name"] for entry in top if entry.get("type") != "directory"]
        if len(folders) > 1:
            with ThreadPoolExecutor(min(LISTING_THREADS, len(folders))) as pool:
                for found in pool.map(lambda folder: fs.find(folder, withdirs=False), folders):
                    files += found
        else:
            files += [name for folder in folders for name in fs.find(folder, withdirs=False)]
        return sorted(set(files))
    except Exception as exc:  # noqa: BLE001
        raise DatasetError(f"cannot list dataset {url}: {exc}") from exc


def _relative(full: str, base: str) -> str:
    base = base.rstrip("/")
    if base and full.startswith(base + "/"):
        return full[len(base) + 1:]
    return posixpath.basename(full)


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def _any_image(visible, extensions) -> bool:
    allowed = tuple(e.lower() for e in (extensions or IMAGE_EXTENSIONS))
    return any(r.lower().endswith(allowed) for _, r in visible)


def is_local_filesystem(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")
