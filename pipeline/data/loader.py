"""Read, decode and batch a listing's images in parallel worker processes, in listing order.

Each work item is a whole batch of consecutive images, so one worker fetches its files together
(concurrent requests on object stores, one row-group read for Parquet) and decodes them with
Pillow. Images that cannot be read or decoded are returned as skipped, with id and reason,
never as an exception: one bad file must not stop a scan of millions.

With `LoaderOptions(decode="device")` workers only read bytes and route them: plain JPEGs travel
as bytes and are decoded together in this process on the model's device (`device_decode`),
everything else is decoded by Pillow in the worker, and a JPEG the device decoder rejects gets
Pillow here; batches then arrive already on the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from loupe.pipeline.data.decode import ImageDecodeError, decode_image_with_size
from loupe.pipeline.data.errors import DatasetError
from loupe.pipeline.data.listing import FOLDER, Listing
from loupe.pipeline.data.sources import filesystem, is_local_filesystem


#: Where images are decoded: Pillow in the worker processes (bit-exact, the default), or the model's device.
DECODERS = ("pillow", "device")


@dataclass(frozen=True)
class LoaderOptions:
    """How images are fed: batch size, decoding worker processes (0 = decode in this process)."""

    images_per_batch: int = 64  # images decoded and fed to the model together
    workers: int = 2
    prefetch_batches: int = 2
    multiprocessing_context: str | None = None
    decode: str = "pillow"  # or "device": JPEGs decoded on the model's device (see the module docstring)

    def __post_init__(self) -> None:
        for name in ("images_per_batch", "prefetch_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise DatasetError(f"loader.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise DatasetError(f"loader.workers must be an integer >= 0, got {self.workers!r}")
        if self.decode not in DECODERS:
            raise DatasetError(f"loader.decode must be one of {', '.join(map(repr, DECODERS))}, got {self.decode!r}")


@dataclass(frozen=True)
class SkippedImage:
    """An image the scan could not use, and why."""

    position: int
    image_id: str
    reason: str


@dataclass
class Batch:
    """Decoded images at global `positions`, covering listing positions [start, stop)."""

    start: int
    stop: int
    positions: np.ndarray  # int64 (n,)
    keys: np.ndarray  # int64 (n,) id ranks, for tie-breaking
    images: torch.Tensor  # uint8 (n, 3, size, size) RGB
    skipped: list[SkippedImage] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.positions.shape[0])


#: Why a listed file is not read: a symlink (or a path through one) leading out of the dataset.
OUTSIDE_ROOT = "symlink leading outside the dataset root (not followed)"


def _inside_root(path: str, root: str) -> bool:
    """Whether a local path, with every symlink resolved, still lies inside the dataset root."""
    real_root = os.path.realpath(root)
    return os.path.realpath(path).startswith(real_root.rstrip(os.sep) + os.sep)


class ImageReader:
    """Fetches the encoded bytes of listing entries; filesystems are opened lazily per process.

    fsspec filesystems (s3fs especially) are not fork-safe, so a reader pickled or forked into a
    worker opens its own on first use.
    """

    def __init__(self, listing: Listing, storage_options: Mapping[str, Any] | None = None) -> None:
        self.listing = listing
        self.storage_options = dict(storage_options or {})
        self._fs = None
        self._fs_pid: int | None = None
        self._root = ""
        self._parquet_files: dict[int, Any] = {}
        self._row_group_cache: tuple[tuple[int, int], Any] | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_fs=None, _fs_pid=None, _parquet_files={}, _row_group_cache=None)
        return state

    def _filesystem(self):
        if self._fs is None or self._fs_pid != os.getpid():
            self._fs, self._root = filesystem(self.listing.root, self.storage_options)
            self._root = self._root.rstrip("/")
            self._fs_pid = os.getpid()
            self._parquet_files = {}
            self._row_group_cache = None
        return self._fs

    def read(self, local: np.ndarray) -> list[bytes | None | BaseException]:
        """Bytes (or None for a null Parquet cell, or the exception) for each local offset."""
        fs = self._filesystem()
        if self.listing.kind == FOLDER:
            paths = self.listing.table.column("path").take(local).to_pylist()
            full = [f"{self._root}/{p}" for p in paths]
            if not is_local_filesystem(fs):
                return list(fs.cat_ranges(full, None, None, on_error="return"))
            inside = [_inside_root(path, self._root) for path in full]
            read = iter(fs.cat_ranges([p for p, ok in zip(full, inside) if ok], None, None, on_error="return"))
            return [next(read) if ok else ImageDecodeError(OUTSIDE_ROOT) for ok in inside]
        files = self.listing.table.column("file").take(local).to_numpy()
        rows = self.listing.table.column("row").take(local).to_numpy()
        out: list[bytes | None | BaseException] = []
        for file_number, row in zip(files.tolist(), rows.tolist()):
            try:
                out.append(self._parquet_cell(fs, file_number, row))
            except Exception as exc:  # noqa: BLE001 - reported per image by the caller
                out.append(exc)
        return out

    def _parquet_cell(self, fs, file_number: int, row: int) -> bytes | None:
        import pyarrow.parquet as pq

        if file_number not in self._parquet_files:
            handle = fs.open(f"{self._root}/{self.listing.files[file_number]}", "rb")
            parquet = pq.ParquetFile(handle)
            sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
            self._parquet_files[file_number] = (parquet, np.cumsum([0, *sizes]))
        parquet, offsets = self._parquet_files[file_number]
        group = int(np.searchsorted(offsets, row, side="right") - 1)
        cache_key = (file_number, group)
        if self._row_group_cache is None or self._row_group_cache[0] != cache_key:
            column = parquet.read_row_group(group, columns=[self.listing.image_column]).column(0).combine_chunks()
            if pa.types.is_struct(column.type):
                column = column.field("bytes")
            self._row_group_cache = (cache_key, column)
        return self._row_group_cache[1][row - int(offsets[group])].as_py()


def decode_contents(contents: list, local: np.ndarray, input_size: int, resize_size: int
                    ) -> tuple[list[np.ndarray], list[int], list[tuple[int, str]], list[tuple[int, int]]]:
    """Decode what `ImageReader.read` returned for `local` offsets: (images, kept offsets,
    (offset, reason) of each skipped image, original (height, width) of each kept image)."""
    images, kept, skipped, sizes = [], [], [], []
    for offset, content in zip(local.tolist(), contents):
        try:
            if isinstance(content, ImageDecodeError):
                raise content
            if isinstance(content, BaseException):
                raise ImageDecodeError(f"read failed ({type(content).__name__}: {content})")
            pixels, size = decode_image_with_size(content, input_size, resize_size)
            images.append(pixels)
            sizes.append(size)
            kept.append(offset)
        except ImageDecodeError as exc:
            skipped.append((offset, exc.reason))
    return images, kept, skipped, sizes


@dataclass(frozen=True, eq=False)
class DecodedImages:
    """Some images of a listing, each read and decoded once, at the model's input size."""

    positions: np.ndarray  # int64 (n,) global listing positions
    keys: np.ndarray  # int64 (n,) id ranks
    images: np.ndarray  # uint8 (n, 3, size, size)
    original_sizes: np.ndarray  # int64 (n, 2): (height, width) of the decoded original
    skipped: list[SkippedImage]

    def has(self, positions: np.ndarray) -> np.ndarray:
        """Which of `positions` were decoded."""
        return np.isin(np.asarray(positions, dtype=np.int64), self.positions)

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """Row in `images` of each of `positions` (all must have been decoded)."""
        positions = np.asarray(positions, dtype=np.int64)
        rows = np.searchsorted(self.positions, positions)
        bad = (rows >= len(self.positions)) | (self.positions[np.minimum(rows, len(self.positions) - 1)] != positions) \
            if len(self.positions) else np.ones(len(positions), dtype=bool)
        if np.any(bad):
            raise DatasetError(f"image at listing position {int(positions[np.argmax(bad)])} was not decoded")
        return rows


def read_images(listing: Listing, local: np.ndarray, input_size: int, resize_size: int,
                storage_options: Mapping[str, Any] | None = None, *, decode: str = "pillow",
                device: torch.device | str = "cpu") -> DecodedImages:
    """Read and decode the images at `local` offsets of `listing` (increasing, no repeats), once each.

    `decode="device"` decodes JPEGs as a scan with `LoaderOptions(decode="device")` does, so
    example pictures show (and their values match) the pixels that scan saw."""
    local = np.asarray(local, dtype=np.int64)
    if len(local) and (np.any(np.diff(local) <= 0) or local[0] < 0 or local[-1] >= len(listing)):
        raise DatasetError(f"read_images needs increasing offsets inside the listing's {len(listing)} images")
    LoaderOptions(decode=decode)  # validates `decode`
    reader = ImageReader(listing, storage_options)
    contents = reader.read(local) if len(local) else []
    if decode == "device":
        routed = route_for_device(contents, local, input_size, resize_size)
        on_device, kept, skipped, sizes = finish_on_device(routed, input_size, resize_size, torch.device(device))
        images = list(on_device.cpu().numpy())
    else:
        images, kept, skipped, sizes = decode_contents(contents, local, input_size, resize_size)
    kept_array = np.asarray(kept, dtype=np.int64)
    ids = listing.ids([o for o, _ in skipped]) if skipped else []
    return DecodedImages(
        positions=kept_array + listing.start,
        keys=listing.keys[kept_array] if len(kept_array) else np.zeros(0, np.int64),
        images=np.stack(images) if images else np.zeros((0, 3, input_size, input_size), dtype=np.uint8),
        original_sizes=np.asarray(sizes, dtype=np.int64).reshape(-1, 2),
        skipped=[SkippedImage(listing.start + o, i, r) for (o, r), i in zip(skipped, ids)],
    )


@dataclass
class RoutedImages:
    """Images split for device decoding: plain JPEGs as bytes (for the device), everything else
    already decoded by Pillow. Offsets are local listing offsets, increasing within each part."""

    jpeg_offsets: list[int]
    jpegs: list[torch.Tensor]  # 1-D uint8 CPU tensors of encoded bytes
    orientations: list[int]  # EXIF orientation of each JPEG, read by Pillow
    offsets: list[int]  # of the Pillow-decoded images
    images: list[np.ndarray]  # uint8 (3, size, size)
    sizes: list[tuple[int, int]]  # original (height, width) of each Pillow-decoded image
    skipped: list[tuple[int, str]]  # (offset, reason)


def route_for_device(contents: list, local: np.ndarray, input_size: int, resize_size: int) -> RoutedImages:
    """The CPU half of device decoding (a worker's, in a scan): plain JPEGs stay bytes, everything
    else is decoded by Pillow here, and what Pillow cannot read is skipped with its reason."""
    from loupe.pipeline.data.device_decode import jpeg_orientation

    orientations = [jpeg_orientation(c) if isinstance(c, (bytes, bytearray)) else None for c in contents]
    jpeg = [i for i, o in enumerate(orientations) if o is not None]
    rest = [i for i, o in enumerate(orientations) if o is None]
    images, kept, skipped, sizes = decode_contents([contents[i] for i in rest], local[rest], input_size, resize_size)
    return RoutedImages(
        jpeg_offsets=[int(local[i]) for i in jpeg],
        jpegs=[torch.frombuffer(bytearray(contents[i]), dtype=torch.uint8) for i in jpeg],
        orientations=[orientations[i] for i in jpeg],
        offsets=kept, images=images, sizes=sizes, skipped=skipped,
    )


def finish_on_device(routed: RoutedImages, input_size: int, resize_size: int, device: torch.device
                     ) -> tuple[torch.Tensor, np.ndarray, list[tuple[int, str]], list[tuple[int, int]]]:
    """The device half: decode the JPEGs together on `device`, give the ones it refuses to Pillow,
    and merge everything in listing order: (uint8 images on `device`, kept offsets, skipped
    (offset, reason) sorted, original (height, width) per kept image)."""
    from loupe.pipeline.data.device_decode import decode_jpegs_with_sizes

    decoded, decoded_sizes = decode_jpegs_with_sizes(routed.jpegs, routed.orientations, input_size, resize_size,
                                                     device)
    failed = [i for i, image in enumerate(decoded) if image is None]
    fallback, fallback_kept, fallback_skipped, fallback_sizes = decode_contents(
        [routed.jpegs[i].numpy().tobytes() for i in failed],
        np.asarray([routed.jpeg_offsets[i] for i in failed], dtype=np.int64), input_size, resize_size)
    rows = {o: (image, size) for o, image, size in zip(routed.jpeg_offsets, decoded, decoded_sizes) if image is not None}
    host = {o: (torch.from_numpy(image), size) for o, image, size in
            zip([*routed.offsets, *fallback_kept], [*routed.images, *fallback], [*routed.sizes, *fallback_sizes])}
    kept = np.asarray(sorted([*rows, *host]), dtype=np.int64)
    images = torch.empty((len(kept), 3, input_size, input_size), dtype=torch.uint8, device=device)
    for part in (rows, host):
        if part:
            where = torch.from_numpy(np.searchsorted(kept, list(part)).astype(np.int64)).to(device)
            images[where] = torch.stack([image for image, _ in part.values()]).to(device, non_blocking=True)
    sizes = {**{o: size for o, (_, size) in rows.items()}, **{o: size for o, (_, size) in host.items()}}
    return images, kept, sorted([*routed.skipped, *fallback_skipped]), [sizes[int(o)] for o in kept]


class _BatchDataset(Dataset):
    """Item i = decoded batch i of the listing (consecutive positions)."""

    def __init__(self, listing: Listing, input_size: int, resize_size: int, batch_size: int,
                 storage_options: Mapping[str, Any] | None, decode: str = "pillow") -> None:
        self.reader = ImageReader(listing, storage_options)
        self.listing = listing
        self.input_size = input_size
        self.resize_size = resize_size
        self.batch_size = batch_size
        self.keys = listing.keys
        self.decode = decode

    def __len__(self) -> int:
        return -(-len(self.listing) // self.batch_size)

    def __getitem__(self, index: int) -> dict:
        lo = index * self.batch_size
        hi = min(lo + self.batch_size, len(self.listing))
        local = np.arange(lo, hi, dtype=np.int64)
        if self.decode == "device":
            return self._routed(self.reader.read(local), local, lo, hi)
        images, kept, skipped, _ = decode_contents(self.reader.read(local), local, self.input_size, self.resize_size)
        kept_array = np.asarray(kept, dtype=np.int64)
        skipped_ids = self.listing.ids([s[0] for s in skipped]) if skipped else []
        size = self.input_size
        stacked = np.stack(images) if images else np.zeros((0, 3, size, size), dtype=np.uint8)
        return {
            "start": self.listing.start + lo,
            "stop": self.listing.start + hi,
            "positions": torch.from_numpy(kept_array + self.listing.start),
            "keys": torch.from_numpy(self.keys[kept_array]),
            "images": torch.from_numpy(stacked),
            "skipped": [(self.listing.start + o, i, r) for (o, r), i in zip(skipped, skipped_ids)],
        }

    def _routed(self, contents: list, local: np.ndarray, lo: int, hi: int) -> dict:
        """A worker's half of device decoding, packed for crossing processes: the JPEGs' bytes as
        one tensor (a few shared-memory blocks per batch), the Pillow-decoded rest stacked."""
        routed = route_for_device(contents, local, self.input_size, self.resize_size)
        size = self.input_size
        images = np.stack(routed.images) if routed.images else np.zeros((0, 3, size, size), dtype=np.uint8)
        return {
            "start": self.listing.start + lo,
            "stop": self.listing.start + hi,
            "jpeg_offsets": torch.tensor(routed.jpeg_offsets, dtype=torch.int64),
            "jpeg_bounds": torch.from_numpy(np.cumsum([0, *(len(j) for j in routed.jpegs)], dtype=np.int64)),
            "jpeg_bytes": torch.cat(routed.jpegs) if routed.jpegs else torch.zeros(0, dtype=torch.uint8),
            "orientations": torch.tensor(routed.orientations, dtype=torch.int64),
            "offsets": torch.tensor(routed.offsets, dtype=torch.int64),
            "images": torch.from_numpy(images),
            "sizes": torch.tensor(routed.sizes, dtype=torch.int64).reshape(-1, 2),
            "skipped": routed.skipped,
        }

    def batch_on_device(self, item: dict, device: torch.device) -> Batch:
        """This process's half of device decoding: unpack a worker's item, finish it on `device`."""
        bounds = item["jpeg_bounds"].tolist()
        routed = RoutedImages(
            jpeg_offsets=item["jpeg_offsets"].tolist(),
            jpegs=[item["jpeg_bytes"][a:b] for a, b in zip(bounds[:-1], bounds[1:])],
            orientations=item["orientations"].tolist(),
            offsets=item["offsets"].tolist(),
            images=list(item["images"].numpy()),
            sizes=[tuple(size) for size in item["sizes"].tolist()],
            skipped=[(int(o), str(r)) for o, r in item["skipped"]],  # pin_memory turns tuples into lists
        )
        images, kept, skipped, _ = finish_on_device(routed, self.input_size, self.resize_size, device)
        ids = self.listing.ids([o for o, _ in skipped]) if skipped else []
        return Batch(
            start=int(item["start"]),
            stop=int(item["stop"]),
            positions=kept + self.listing.start,
            keys=self.keys[kept],
            images=images,
            skipped=[SkippedImage(self.listing.start + o, i, r) for (o, r), i in zip(skipped, ids)],
        )


def _as_is(item: dict) -> dict:
    return item


def iter_batches(
    listing: Listing,
    input_size: int,
    resize_size: int,
    *,
    options: LoaderOptions = LoaderOptions(),
    storage_options: Mapping[str, Any] | None = None,
    pin_memory: bool = False,
    device: torch.device | str = "cpu",
) -> Iterator[Batch]:
    """Decoded batches of `listing` in order; bad images come back in `Batch.skipped`.

    With `options.decode == "device"` the images are decoded on `device` and arrive there;
    otherwise `device` is unused and images arrive on the CPU (pinned if `pin_memory`)."""
    dataset = _BatchDataset(listing, input_size, resize_size, options.images_per_batch, storage_options,
                            options.decode)
    device = torch.device(device)
    workers = min(options.workers, len(dataset))
    loader = DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_is,
        pin_memory=pin_memory,
        prefetch_factor=options.prefetch_batches if workers else None,
        multiprocessing_context=options.multiprocessing_context if workers else None,
    )
    for item in loader:
        if options.decode == "device":
            yield dataset.batch_on_device(item, device)
            continue
        yield Batch(
            start=int(item["start"]),
            stop=int(item["stop"]),
            positions=item["positions"].numpy(),
            keys=item["keys"].numpy(),
            images=item["images"],
            skipped=[SkippedImage(int(p), str(i), str(r)) for p, i, r in item["skipped"]],
        )
