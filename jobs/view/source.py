"""Which atlas versions exist and an open reader per version, cached (versions never change)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

from loupe.storage import Atlas, VersionInfo, VersionStatus, open_atlas, read_state

#: How long the list of versions (and which one is current) is trusted before it is read again.
STATE_TTL_S = 10.0
#: Open versions kept (each holds its manifest and the tables it has read).
OPEN_VERSIONS = 8


@dataclass(frozen=True)
class Versions:
    current: str | None
    complete: tuple[VersionInfo, ...]  # published or sealed versions, newest first


class AtlasSource:
    """The atlas at `url`: its versions, and a reader for each (read-only, thread-safe)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, *, ranged_reads: bool = True) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.ranged_reads = ranged_reads
        self._lock = threading.Lock()
        self._open: OrderedDict[str, Atlas] = OrderedDict()
        self._versions: tuple[float, Versions] | None = None

    def versions(self) -> Versions:
        with self._lock:
            if self._versions is None or time.monotonic() - self._versions[0] > STATE_TTL_S:
                state = read_state(self.url, self.storage_options, with_items=False)
                done = (VersionStatus.CURRENT, VersionStatus.PUBLISHED, VersionStatus.COMPLETE)
                complete = tuple(v for v in reversed(state.versions) if v.status in done)
                self._versions = (time.monotonic(), Versions(state.current, complete))
            return self._versions[1]

    def atlas(self, version: str | None = None) -> Atlas:
        """The given version, or the current one (raises VersionNotFoundError naming it)."""
        version = version or self.versions().current
        with self._lock:
            if version in self._open:
                self._open.move_to_end(version)
                return self._open[version]
        opened = open_atlas(self.url, version, self.storage_options, ranged_reads=self.ranged_reads)
        with self._lock:
            self._open[opened.version] = opened
            while len(self._open) > OPEN_VERSIONS:
                self._open.popitem(last=False)
        return opened
