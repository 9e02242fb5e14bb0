"""Who owns a draft: one small lease object per unpublished version, `versions/<v>/lease.json`.

Workers write items into a draft without it; the lease decides which build may resume, seal and
publish the draft, and keeps `prune --drafts` away from it. Every change is a conditional write
(`ObjectStore.put_conditional`), so two builds can never both believe they hold it:

- acquire: create the object only if absent; or replace an existing lease only if it has expired
  (renewed_at + ttl in the past), or its holder is a process on this host that no longer runs
  (a killed driver), naming the exact content that was read (If-Match on its ETag);
- renew: replace our own lease, again only if it is still exactly what we last wrote; a heartbeat
  thread renews every ttl/3, and the builder renews once more before sealing and before the swap;
- release: delete it when the build ends.

Expiry compares wall clocks of different hosts; keep them NTP-synchronised to well under the TTL.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass

from loupe.storage import layout
from loupe.storage.checksums import canonical_json
from loupe.storage.errors import StorageError
from loupe.storage.objects import ConditionFailedError, ObjectStore, Tagged

#: Seconds a lease stays live without renewal; the heartbeat renews it every third of that.
DEFAULT_TTL_S = 120.0


class LeaseHeldError(StorageError):
    """Another live build owns the draft."""


class LeaseLostError(StorageError):
    """This build no longer owns its draft: taken over after expiry, or the draft was deleted."""


@dataclass(frozen=True)
class LeaseInfo:
    """The content of lease.json."""

    holder: str  # host:pid:token, unique per acquisition
    host: str
    pid: int
    acquired_at: float  # seconds since the epoch
    renewed_at: float
    ttl_s: float

    def expires_at(self) -> float:
        return self.renewed_at + self.ttl_s

    def is_live(self, now: float | None = None) -> bool:
        """Renewed within its TTL, and (for a holder on this host) its process still runs."""
        now = time.time() if now is None else now
        if now >= self.expires_at():
            return False
        return not (self.host == socket.gethostname() and not _process_runs(self.pid))

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        return (f"host {self.host} pid {self.pid} (renewed {max(0.0, now - self.renewed_at):.0f} s ago, "
                f"expires in {max(0.0, self.expires_at() - now):.0f} s)")

    def to_bytes(self) -> bytes:
        return canonical_json(asdict(self))

    @classmethod
    def from_bytes(cls, data: bytes, url: str) -> "LeaseInfo":
        try:
            raw = json.loads(data)
            return cls(str(raw["holder"]), str(raw["host"]), int(raw["pid"]), float(raw["acquired_at"]),
                       float(raw["renewed_at"]), float(raw["ttl_s"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"unreadable draft lease {url}: {exc}", url=url) from exc


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lease(store: ObjectStore, version: str) -> LeaseInfo | None:
    """The draft's lease, or None if it has none (never leased, released, or deleted)."""
    raw = store.get_optional(layout.lease(version))
    return None if raw is None else LeaseInfo.from_bytes(raw, store.location.url_of(layout.lease(version)))


class Lease:
    """This process's hold on one draft. Use `acquire`, then `start_heartbeat()`, `renew()` before
    each irreversible step, and `release()` at the end."""

    def __init__(self, store: ObjectStore, version: str, info: LeaseInfo, tag: str) -> None:
        self.store, self.version = store, version
        self.info, self._tag = info, tag
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: LeaseLostError | None = None

    @property
    def url(self) -> str:
        return self.store.location.url_of(layout.lease(self.version))

    @classmethod
    def acquire(cls, store: ObjectStore, version: str, ttl_s: float = DEFAULT_TTL_S) -> "Lease":
        """Take the draft's lease: create it, or take over one that is no longer live.

        Raises LeaseHeldError naming the holder when another live build owns the draft.
        """
        rel = layout.lease(version)
        url = store.location.url_of(rel)
        now = time.time()
        info = LeaseInfo(f"{socket.gethostname()}:{os.getpid()}:{os.urandom(8).hex()}", socket.gethostname(),
                         os.getpid(), now, now, float(ttl_s))
        current: Tagged | None = store.get_tagged(rel)
        if current is not None:
            held = LeaseInfo.from_bytes(current.data, url)
            if held.is_live(now):
                raise _held(store, version, held, now)
        try:
            tag = store.put_conditional(rel, info.to_bytes(), expected_tag=current.tag if current else None)
        except ConditionFailedError as exc:
            held = read_lease(store, version)
            if held is None:
                raise LeaseHeldError(f"draft {version} of {store.location.url}: its lease {url} changed while this "
                                     "build tried to take it; rerun the build", url=url) from exc
            raise _held(store, version, held, time.time()) from exc
        return cls(store, version, info, tag)

    def renew(self) -> None:
        """Extend the lease; raises LeaseLostError if it is no longer ours (taken over or deleted)."""
        with self._lock:
            if self.lost is not None:
                raise self.lost
            info = LeaseInfo(self.info.holder, self.info.host, self.info.pid, self.info.acquired_at, time.time(),
                             self.info.ttl_s)
            try:
                tag = self.store.put_conditional(layout.lease(self.version), info.to_bytes(), expected_tag=self._tag)
            except ConditionFailedError as exc:
                self.lost = self._lost_error()
                raise self.lost from exc
            self.info, self._tag = info, tag

    def _lost_error(self) -> LeaseLostError:
        where = self.store.location.url_of(layout.version_dir(self.version))
        if not self.store.exists(layout.draft_info(self.version)):
            return LeaseLostError(
                f"draft version {self.version} vanished from under this build: {where} was deleted while the build "
                "ran (by `loupe atlas prune --drafts`, or by hand); rerun the build to start a new version", url=where)
        held = read_lease(self.store, self.version)
        who = f"by {held.describe()}" if held else "(its lease object was deleted)"
        return LeaseLostError(
            f"this build lost its lease on draft version {self.version} at {where}: it expired and was taken over "
            f"{who}; this build stops without sealing or publishing it", url=where)

    def raise_if_lost(self) -> None:
        """Raise the heartbeat's failure, if it saw the lease go."""
        if self.lost is not None:
            raise self.lost

    def start_heartbeat(self, interval_s: float | None = None) -> None:
        """Renew in a daemon thread every `interval_s` (default ttl/3) until release()."""
        if self._thread is not None:
            return
        interval = self.info.ttl_s / 3 if interval_s is None else interval_s

        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    self.renew()
                except LeaseLostError:
                    return
                except StorageError:
                    continue  # a transient failure: the next beat retries well before expiry

        self._thread = threading.Thread(target=beat, name=f"lease-{self.version}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            if self.lost is not None:
                return
            current = self.store.get_tagged(layout.lease(self.version))
            if current is not None and current.tag == self._tag:
                self.store.delete(layout.lease(self.version))
            self.lost = LeaseLostError(f"the lease on draft {self.version} was released", url=self.url)


def _held(store: ObjectStore, version: str, held: LeaseInfo, now: float) -> LeaseHeldError:
    where = store.location.url_of(layout.version_dir(version))
    return LeaseHeldError(
        f"draft version {version} at {where} is being built by another build: {held.describe(now)}. "
        "Wait for that build to finish (this config will then be unchanged or resumable), or rerun once its "
        "lease has expired if that build died.", url=where)
