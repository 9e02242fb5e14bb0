"""Publishing: pointer swapped last with compare-and-swap, crash safety, races, pruning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.storage.atlas_samples import write_small
from loupe.storage import AtlasWriter, PublishConflictError, StorageError, list_versions, open_atlas, prune
from loupe.storage.objects import ObjectStore


def _publish_one(target, seed=0) -> AtlasWriter:
    writer = AtlasWriter.create(target.url, storage_options=target.options)
    write_small(writer, seed=seed)
    writer.publish()
    return writer


def test_open_readers_keep_their_version_while_a_new_one_is_published(target):
    old = _publish_one(target, seed=0)
    reader = open_atlas(target.url, storage_options=target.options)
    before = reader.render("net", "conv1", 2)
    new = _publish_one(target, seed=5)
    assert not np.array_equal(open_atlas(target.url, storage_options=target.options).render("net", "conv1", 2), before)
    np.testing.assert_array_equal(reader.render("net", "conv1", 2), before)  # pinned to the old version
    assert reader.version == old.version
    statuses = {v.version: v.status for v in list_versions(target.url, target.options)}
    assert statuses == {old.version: "published", new.version: "current"}


def test_concurrent_publish_is_won_by_exactly_one(target):
    base = _publish_one(target)
    writers = [AtlasWriter.create(target.url, storage_options=target.options) for _ in range(2)]
    for i, writer in enumerate(writers):
        write_small(writer, seed=10 + i)
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def run(writer):
        barrier.wait()
        try:
            writer.publish()
            outcomes[writer.version] = "won"
        except PublishConflictError as exc:
            outcomes[writer.version] = exc

    threads = [threading.Thread(target=run, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [v for v, o in outcomes.items() if o == "won"]
    losers = [v for v, o in outcomes.items() if o != "won"]
    assert len(winners) == 1 and len(losers) == 1
    message = str(outcomes[losers[0]])
    assert losers[0] in message and "intact" in message and target.url in message
    assert open_atlas(target.url, storage_options=target.options).version == winners[0]
    # The loser's data stays complete and readable under its own version id.
    loser = open_atlas(target.url, version=losers[0], storage_options=target.options)
    assert loser.verify() > 0
    statuses = {v.version: v.status for v in list_versions(target.url, target.options)}
    assert statuses == {base.version: "published", winners[0]: "current", losers[0]: "complete"}


def test_pointer_compare_and_swap_rejects_a_stale_expectation(target, monkeypatch):
    """The store's conditional write itself (If-Match on S3, the tag compared under flock locally)
    decides: another build publishes between our read of the pointer and our write."""
    first = _publish_one(target)
    slow = AtlasWriter.create(target.url, storage_options=target.options)
    write_small(slow, seed=3)
    original = ObjectStore.put_conditional
    interloper = {}

    def lose_the_race(store, rel, data, *, expected_tag):
        if rel == "atlas.json" and not interloper and slow.version.encode() in data:
            interloper["v"] = _publish_one(target, seed=4).version
        return original(store, rel, data, expected_tag=expected_tag)

    monkeypatch.setattr(ObjectStore, "put_conditional", lose_the_race)
    with pytest.raises(PublishConflictError, match="another build published"):
        slow.publish()
    assert slow.base_version == first.version
    assert open_atlas(target.url, storage_options=target.options).version == interloper["v"]
    assert interloper["v"] in str(pytest.raises(PublishConflictError, slow.publish).value)


def _child_env(target) -> dict:
    env = dict(os.environ)
    here = Path(__file__).resolve().parent
    env["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parents[1]), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize("where", ["pointer", "item"])
def test_writer_killed_before_the_pointer_leaves_the_old_version(target, where):
    old = _publish_one(target)
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_crash_writer.py")), target.url,
         json.dumps(target.options or {}), where],
        stdout=subprocess.PIPE, text=True, env=_child_env(target),
    )
    try:
        version = child.stdout.readline().split()[1]
        assert child.stdout.readline().strip() == "READY"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    atlas = open_atlas(target.url, storage_options=target.options)
    assert atlas.version == old.version
    assert atlas.verify() > 0
    statuses = {v.version: v.status for v in list_versions(target.url, target.options)}
    assert statuses[old.version] == "current"
    assert statuses[version] == ("complete" if where == "pointer" else "building")
    resumed = AtlasWriter.resume(target.url, version, storage_options=target.options) if where == "item" else None
    if resumed is not None:
        assert "half-written" not in resumed.completed_items()


def test_prune_keeps_the_newest_n_and_only_when_asked(target):
    versions = [_publish_one(target, seed=s).version for s in range(3)]
    draft = AtlasWriter.create(target.url, storage_options=target.options)
    write_small(draft, seed=9)
    assert [v.version for v in list_versions(target.url, target.options)] == versions + [draft.version]
    assert prune(target.url, keep=2, storage_options=target.options, dry_run=True) == versions[:1]
    assert len(list_versions(target.url, target.options)) == 4  # dry run deleted nothing
    assert prune(target.url, keep=2, storage_options=target.options) == versions[:1]
    remaining = {v.version: v.status for v in list_versions(target.url, target.options)}
    assert remaining == {versions[1]: "published", versions[2]: "current", draft.version: "building"}
    assert open_atlas(target.url, version=versions[1], storage_options=target.options).verify() > 0
    assert open_atlas(target.url, storage_options=target.options).version == versions[2]
    with pytest.raises(Exception, match="positive integer"):
        prune(target.url, keep=0, storage_options=target.options)


def test_local_pointer_swap_leaves_no_temporary_files(tmp_path, monkeypatch):
    """A failed rename removes its temporary file; litter from killed publishers goes at the next publish."""
    url = str(tmp_path / "atlas")
    first = AtlasWriter.create(url)
    write_small(first)
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("atlas.json"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StorageError, match="atlas.json: OSError: disk full"):
        first.publish()
    monkeypatch.setattr(os, "replace", real_replace)
    assert not list((tmp_path / "atlas").glob("*.tmp")) and not list((tmp_path / "atlas").glob(".*.tmp"))
    (tmp_path / "atlas" / ".atlas.json.killed.tmp").write_bytes(b"{")
    (tmp_path / "atlas" / "atlas.json.123.abcd.tmp").write_bytes(b"{")
    first.publish()
    assert open_atlas(url).version == first.version
    assert sorted(p.name for p in (tmp_path / "atlas").iterdir()) == [".atlas.lock", "atlas.json", "versions"]
