"""A zarr store that refuses to read a missing object as fill value.

Zarr treats an absent chunk or shard as "never written" and returns its fill value: black
renders, NaN activations, no error. In a sealed atlas version that is only true for objects the
manifest does not list (units a build never rendered); an object the checksum list names but the
store no longer has (a version pruned under a reader, a lost upload) must be an error that names
it. The store also records which objects a read touched, so a checksum failure of a ranged read
can be traced to the objects involved and re-verified whole.

With `ranged_reads=False` it never sends a byte-range request: each object is fetched whole
(a few recent ones are kept, since a sharded read asks for the index and then the chunk), checked
against its SHA-256 from the checksum list, and the requested range is cut out locally. That is
the way to read an atlas through a store or proxy that serves ranges wrongly.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from typing import Any, AsyncGenerator, Callable, Iterable

from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.storage import WrapperStore

from loupe.storage.errors import StorageError


class MissingObjectError(StorageError):
    """An object the version's checksum list names is absent from the store."""


class ManifestGuardedStore(WrapperStore):
    """Wraps a read-only zarr store rooted at a version folder.

    `is_listed(key)` answers whether the version's checksum list names the object `key` (a path
    relative to the version folder); `url_of(key)` gives its URL for messages. Without ranged
    reads, `verify(key, data)` checks a whole object against its recorded SHA-256 (raising if it
    differs) and `keep_objects` bounds how many whole objects are kept for later ranges.
    """

    def __init__(self, store: Any, is_listed: Callable[[str], bool], url_of: Callable[[str], str], *,
                 ranged_reads: bool = True, verify: Callable[[str, bytes], None] | None = None,
                 keep_objects: int = 8) -> None:
        super().__init__(store)
        self._is_listed = is_listed
        self._url_of = url_of
        self._ranged = ranged_reads
        self._verify = verify
        self._keep = keep_objects
        self._whole: OrderedDict[str, asyncio.Future] = OrderedDict()
        self._touched: list[str] | None = None
        self._lock = threading.Lock()

    def _with_store(self, store: Any) -> "ManifestGuardedStore":
        return type(self)(store, self._is_listed, self._url_of, ranged_reads=self._ranged, verify=self._verify,
                          keep_objects=self._keep)

    def start_tracking(self) -> None:
        """Begin recording the objects read (see `touched`). zarr runs reads on its own event-loop
        thread, so this is per store, not per calling thread: one read diagnosed at a time."""
        with self._lock:
            self._touched = []

    def touched(self) -> list[str]:
        """Objects read since `start_tracking`, in order, without repeats."""
        with self._lock:
            return list(dict.fromkeys(self._touched or []))

    def _seen(self, key: str, found: bool) -> None:
        with self._lock:
            if self._touched is not None:
                self._touched.append(key)
        if not found and self._is_listed(key):
            url = self._url_of(key)
            raise MissingObjectError(
                f"missing object {url}: the version's checksum list names it but the store does not have it "
                "(was this version pruned while it was open, or an upload lost?)", url=url)

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        if not self._ranged and byte_range is not None:
            whole = await self._get_whole(key, prototype)
            return None if whole is None else whole[slice(*_bounds(len(whole), byte_range))]
        value = await self._store.get(key, prototype, byte_range)
        self._seen(key, value is not None)
        if value is not None and byte_range is None and not self._ranged and self._verify is not None:
            self._verify(key, value.to_bytes())
        return value

    async def _get_whole(self, key: str, prototype: Any) -> Any:
        """One whole, verified fetch per object, shared by concurrent and later range requests."""
        future = self._whole.get(key)
        if future is None:
            future = self._whole[key] = asyncio.ensure_future(self.get(key, prototype))
            while len(self._whole) > self._keep:
                self._whole.popitem(last=False)
        else:
            self._whole.move_to_end(key)
        try:
            return await asyncio.shield(future)
        except Exception:
            if self._whole.get(key) is future:
                del self._whole[key]  # a failed fetch is retried next time, not remembered
            raise

    async def get_partial_values(self, prototype: Any, key_ranges: Iterable[tuple[str, Any]]) -> list[Any]:
        return list(await asyncio.gather(*(self.get(key, prototype, byte_range) for key, byte_range in key_ranges)))

    async def _get_many(self, requests: Iterable[tuple[str, Any, Any]]) -> AsyncGenerator[tuple[str, Any], None]:
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)


def _bounds(size: int, byte_range: Any) -> tuple[int, int]:
    """[start, stop) of a zarr byte request within an object of `size` bytes."""
    if isinstance(byte_range, RangeByteRequest):
        return byte_range.start, byte_range.end
    if isinstance(byte_range, OffsetByteRequest):
        return byte_range.offset, size
    if isinstance(byte_range, SuffixByteRequest):
        return max(size - byte_range.suffix, 0), size
    raise ValueError(f"unexpected byte range {byte_range!r}")
