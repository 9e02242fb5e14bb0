"""A zarr store that refuses to read a missing object as fill value.

Zarr treats an absent chunk or shard as "never written" and returns its fill value: black
renders, NaN activations, no error. In a sealed atlas version that is only true for objects the
manifest does not list (units a build never rendered); an object the checksum list names but the
store no longer has (a version pruned under a reader, a lost upload) must be an error that names
it. The store also records which objects a read touched, so a checksum failure of a ranged read
can be traced to the objects involved and re-verified whole.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable

from zarr.storage import WrapperStore

from loupe.storage.errors import StorageError


class MissingObjectError(StorageError):
    """An object the version's checksum list names is absent from the store."""


class ManifestGuardedStore(WrapperStore):
    """Wraps a read-only zarr store rooted at a version folder.

    `is_listed(key)` answers whether the version's checksum list names the object `key` (a path
    relative to the version folder); `url_of(key)` gives its URL for messages.
    """

    def __init__(self, store: Any, is_listed: Callable[[str], bool], url_of: Callable[[str], str]) -> None:
        super().__init__(store)
        self._is_listed = is_listed
        self._url_of = url_of
        self._touched: list[str] | None = None
        self._lock = threading.Lock()

    def _with_store(self, store: Any) -> "ManifestGuardedStore":
        return type(self)(store, self._is_listed, self._url_of)

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
        value = await self._store.get(key, prototype, byte_range)
        self._seen(key, value is not None)
        return value

    async def get_partial_values(self, prototype: Any, key_ranges: Iterable[tuple[str, Any]]) -> list[Any]:
        key_ranges = list(key_ranges)
        values = await self._store.get_partial_values(prototype, key_ranges)
        for (key, _), value in zip(key_ranges, values):
            self._seen(key, value is not None)
        return values
