"""Draft leases: one owner per draft, heartbeat, expiry and takeover, release, and prune safety."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from loupe.storage import AtlasWriter, LeaseHeldError, LeaseLostError, layout, list_versions, prune
from loupe.storage.lease import Lease, LeaseInfo, read_lease
from loupe.storage.objects import ObjectStore
from loupe.storage.urls import resolve
from tests.storage.atlas_samples import write_small


def _store(target) -> ObjectStore:
    return ObjectStore(resolve(target.url, target.options))


def _draft(target, **kwargs) -> AtlasWriter:
    return AtlasWriter.create(target.url, storage_options=target.options, **kwargs)


def test_a_live_lease_refuses_a_second_owner_and_names_the_holder(target):
    writer = _draft(target)
    held = read_lease(writer.store, writer.version)
    assert held is not None and held.holder == writer.lease.info.holder
    with pytest.raises(LeaseHeldError, match=rf"pid {held.pid} .*expires in") as err:
        AtlasWriter.resume(target.url, writer.version, storage_options=target.options, take_lease=True)
    assert writer.version in str(err.value)
    writer.release()
    assert read_lease(writer.store, writer.version) is None
    other = AtlasWriter.resume(target.url, writer.version, storage_options=target.options, take_lease=True)
    assert read_lease(other.store, other.version).holder == other.lease.info.holder


def test_concurrent_acquires_have_exactly_one_winner(target):
    store = _store(target)
    version = layout.new_version_id()
    barrier = threading.Barrier(4)
    outcomes: list[object] = []

    def grab():
        barrier.wait()
        try:
            outcomes.append(Lease.acquire(store, version, ttl_s=60))
        except LeaseHeldError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if isinstance(o, Lease)]
    assert len(winners) == 1 and len(outcomes) == 4
    assert read_lease(store, version).holder == winners[0].info.holder


def test_an_expired_lease_is_taken_over_and_its_old_holder_finds_out(target):
    writer = _draft(target, lease_ttl_s=0.5)
    time.sleep(0.7)
    taker = AtlasWriter.resume(target.url, writer.version, storage_options=target.options, take_lease=True)
    with pytest.raises(LeaseLostError, match="taken over"):
        writer.lease.renew()
    write_small(writer, seed=1)  # workers may still write items; only sealing needs the lease
    with pytest.raises(LeaseLostError):
        writer.publish()
    assert not writer.is_sealed()
    taker.publish()
    assert [v.status for v in list_versions(target.url, target.options)] == ["current"]


def test_the_heartbeat_keeps_a_short_lease_alive(target):
    writer = _draft(target, lease_ttl_s=1.0)
    writer.lease.start_heartbeat(interval_s=0.2)
    time.sleep(1.6)
    with pytest.raises(LeaseHeldError):
        AtlasWriter.resume(target.url, writer.version, storage_options=target.options, take_lease=True)
    writer.release()
    AtlasWriter.resume(target.url, writer.version, storage_options=target.options, take_lease=True).release()


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(target):
    """A killed build driver must not block the rerun for a whole TTL."""
    writer = _draft(target)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    info = writer.lease.info
    stale = LeaseInfo(f"{info.host}:{dead.pid}:feed", info.host, dead.pid, info.acquired_at, time.time(), 3600.0)
    writer.store.put(layout.lease(writer.version), stale.to_bytes())
    assert not stale.is_live()
    resumed = AtlasWriter.resume(target.url, writer.version, storage_options=target.options, take_lease=True)
    assert read_lease(resumed.store, resumed.version).pid == resumed.lease.info.pid


def test_a_deleted_draft_is_reported_as_vanished(target):
    writer = _draft(target)
    write_small(writer)
    writer.store.delete_tree(layout.version_dir(writer.version))
    with pytest.raises(LeaseLostError, match=f"draft version {writer.version} vanished.*prune"):
        writer.publish()


def test_prune_drafts_never_deletes_a_draft_with_a_live_lease(target):
    old = _draft(target)
    write_small(old, seed=2)
    current = _draft(target)
    write_small(current, seed=3)
    current.publish()
    assert prune(target.url, keep=1, storage_options=target.options, drafts=True) == []
    assert old.version in {v.version for v in list_versions(target.url, target.options)}
    old.release()
    assert prune(target.url, keep=1, storage_options=target.options, drafts=True) == [old.version]
    assert [v.version for v in list_versions(target.url, target.options)] == [current.version]


def test_lease_bytes_round_trip():
    info = LeaseInfo("h:1:ab", "h", 1, 10.0, 20.0, 5.0)
    assert LeaseInfo.from_bytes(info.to_bytes(), "x") == info
    assert json.loads(info.to_bytes())["ttl_s"] == 5.0
    assert info.expires_at() == 25.0 and not info.is_live(now=25.0)
