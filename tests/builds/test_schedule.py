"""Items run in the given order as soon as their inputs are done; a reduce never outruns its scans."""

from __future__ import annotations

from loupe.jobs.build.execute import Schedule, run_in_process
from loupe.jobs.build.plan import ReduceSpec, RenderSpec, ScanSpec, WorkItem


def scan(key: str) -> WorkItem:
    return WorkItem(key, "m", ScanSpec(("l",), 2, "fp", 4, True, 0, 1, 0, 4, 4, 0), cost=4)


def reduce(key: str, scans: tuple[str, ...]) -> WorkItem:
    return WorkItem(key, "m", ReduceSpec("l", 0, scans, "fp", False), cost=0)


def render(key: str) -> WorkItem:
    return WorkItem(key, "m", RenderSpec("l", "channel", (0,), 4, 16, 1, 0), cost=1)


def test_a_reduce_waits_for_its_scans_then_jumps_ahead_of_renders():
    schedule = Schedule([scan("s1"), scan("s2"), reduce("r", ("s1", "s2", "reused-earlier")), render("a"), render("b")])
    first, second = schedule.next_ready(), schedule.next_ready()
    assert [first.key, second.key] == ["s1", "s2"]
    assert schedule.next_ready().key == "a"  # the reduce is not ready: its scans are in flight
    schedule.succeeded(first)
    assert schedule.next_ready().key == "b"
    schedule.succeeded(second)  # an input not in this batch ("reused-earlier") counts as done
    assert schedule.next_ready().key == "r"
    assert schedule.next_ready() is None and not schedule.failed


def test_a_reduce_whose_scan_failed_is_reported_not_run():
    schedule = Schedule([scan("s1"), reduce("r", ("s1",)), render("a")])
    s1 = schedule.next_ready()
    schedule.gave_up(s1, "OSError: disk full")
    assert schedule.next_ready().key == "a"
    assert schedule.next_ready() is None
    assert schedule.failed == {"s1": "OSError: disk full", "r": "not run: its input item s1 failed"}


def test_in_process_execution_follows_the_schedule(monkeypatch):
    from loupe.jobs.build import execute

    ran: list[str] = []

    class Runner:
        def __init__(self, **_):
            pass

        def run(self, item):
            if item.key == "s2":
                raise RuntimeError("bad shard")
            ran.append(item.key)
            return {"status": "done"}

    monkeypatch.setattr(execute, "ItemRunner", Runner)
    items = [scan("s1"), scan("s2"), reduce("r1", ("s1",)), reduce("r2", ("s1", "s2")), render("a")]
    outcome = run_in_process(items, {}, lambda item, result: None, max_retries=1)
    assert ran == ["s1", "r1", "a"]
    assert outcome.failed == {"s2": "RuntimeError: bad shard", "r2": "not run: its input item s2 failed"}
