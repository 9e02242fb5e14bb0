"""Execute work items: in-process (no Ray) or on a pool of warm Ray actors per model.

The Ray executor keeps a bounded number of items in flight per actor, retries failed items
(an actor that dies is restarted by Ray and its item resubmitted; writes are idempotent, so a
retry never duplicates anything), and reports each finished item to the progress bar.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from loupe.jobs.build.config import ResourcesConfig
from loupe.jobs.build.plan import WorkItem
from loupe.jobs.build.runner import ItemRunner
from loupe.pipeline.errors import LoupeError

Finished = Callable[[WorkItem, dict[str, Any]], None]


@dataclass
class Outcome:
    results: dict[str, dict[str, Any]]
    failed: dict[str, str]


class Schedule:
    """Which item runs next: the first one, in the given order, whose inputs are done.

    An item needs the items its spec names as inputs (`spec.inputs()`: a reduce its scan shards, a
    score its reduce and renders) that are in this batch, so it starts as soon as they finish,
    ahead of items still waiting; if one of them fails, it is not run and is reported failed with
    that reason.
    """

    def __init__(self, items: Sequence[WorkItem]) -> None:
        keys = {item.key for item in items}
        self.pending = list(items)
        self.needs = {item.key: set(item.spec.inputs()) & keys for item in items}
        self.done: set[str] = set()
        self.failed: dict[str, str] = {}

    def next_ready(self) -> WorkItem | None:
        for position, item in enumerate(self.pending):
            broken = sorted(self.needs[item.key] & self.failed.keys())
            if broken:
                self.failed[item.key] = f"not run: its input item {broken[0]} failed"
                del self.pending[position]
                return self.next_ready()
            if self.needs[item.key] <= self.done:
                return self.pending.pop(position)
        return None

    def succeeded(self, item: WorkItem) -> None:
        self.done.add(item.key)

    def gave_up(self, item: WorkItem, reason: str) -> None:
        self.failed[item.key] = reason

    def retry(self, item: WorkItem) -> None:
        self.pending.insert(0, item)


def run_in_process(items: Sequence[WorkItem], runner_args: dict[str, Any], on_finished: Finished,
                   max_retries: int = 0) -> Outcome:
    """One warm runner in this process; the reference execution for tests and benchmarks."""
    if not items:
        return Outcome({}, {})
    runner = ItemRunner(**runner_args)
    schedule, results = Schedule(items), {}
    while (item := schedule.next_ready()) is not None:
        for attempt in range(max_retries + 1):
            try:
                results[item.key] = runner.run(item)
            except Exception as exc:  # reported per item; the build decides whether to publish
                reason = f"{type(exc).__name__}: {exc}"
            else:
                schedule.succeeded(item)
                on_finished(item, results[item.key])
                break
        else:
            schedule.gave_up(item, reason)
    return Outcome(results, schedule.failed)


@dataclass(frozen=True)
class ActorShape:
    """How big each actor is and how many fit."""

    count: int
    num_gpus: float
    num_cpus: float


def actor_shape(resources: ResourcesConfig, cluster: dict[str, float], n_items: int) -> ActorShape:
    """Size the pool from the cluster's resources: GPUs when there are any, else CPUs (if allowed)."""
    gpus = float(cluster.get("GPU", 0))
    cpus = float(cluster.get("CPU", 0))
    per_gpu_actor = 1.0 / resources.actors_per_gpu if resources.actors_per_gpu > 1 else resources.gpus_per_actor
    if gpus >= 1e-6:
        count = int(gpus / per_gpu_actor + 1e-9)
        shape = ActorShape(count, per_gpu_actor, min(resources.cpus_per_actor, max(cpus / max(count, 1), 0.01)))
    elif not resources.cpu_fallback:
        # An autoscaling GPU cluster shows no GPU until actors ask for one: ask for the whole pool.
        if resources.max_actors is None:
            raise LoupeError(
                "resources: the Ray cluster has no GPUs now and cpu_fallback is false; set resources.max_actors "
                "so the autoscaler knows how many GPU actors to start, or allow cpu_fallback"
            )
        shape = ActorShape(resources.max_actors, per_gpu_actor, resources.cpus_per_actor)
    else:
        count = int(cpus / resources.cpus_per_actor + 1e-9)
        shape = ActorShape(count, 0.0, resources.cpus_per_actor)
    count = max(1, min(shape.count, n_items, resources.max_actors or shape.count))
    return ActorShape(count, shape.num_gpus, shape.num_cpus)


def run_on_ray(items: Sequence[WorkItem], runner_args: dict[str, Any], on_finished: Finished,
               resources: ResourcesConfig) -> Outcome:
    """A pool of warm actors for one model, fed so each has at most `max_in_flight_per_actor` items."""
    import ray

    if not items:
        return Outcome({}, {})
    shape = actor_shape(resources, ray.cluster_resources(), len(items))
    actors = _start_actors(shape, runner_args, resources)
    try:
        return _ActorFeeder(actors, items, resources).run(on_finished)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)


def _start_actors(shape: ActorShape, runner_args: dict[str, Any], resources: ResourcesConfig) -> list[Any]:
    """Warm ItemRunner actors that Ray restarts if they die (their items are then retried)."""
    import ray

    remote_runner = ray.remote(ItemRunner).options(
        num_gpus=shape.num_gpus,
        num_cpus=shape.num_cpus,
        max_restarts=-1,
        max_task_retries=resources.max_retries,
    )
    threads = max(1, int(shape.num_cpus)) if shape.num_gpus == 0 else None
    return [remote_runner.remote(**runner_args, threads=threads) for _ in range(shape.count)]


class _ActorFeeder:
    """Keeps every actor busy with a bounded number of items and retries items that fail."""

    def __init__(self, actors: list[Any], items: Sequence[WorkItem], resources: ResourcesConfig) -> None:
        self.actors = actors
        self.schedule = Schedule(items)
        self.limit = resources.max_in_flight_per_actor
        self.max_retries = resources.max_retries
        self.attempts: dict[str, int] = {}
        self.in_flight: dict[Any, tuple[WorkItem, int]] = {}
        self.load = [0] * len(actors)

    def _fill(self) -> None:
        for index in range(len(self.actors)):
            while self.load[index] < self.limit:
                item = self.schedule.next_ready()
                if item is None:
                    return
                self.in_flight[self.actors[index].run.remote(item)] = (item, index)
                self.load[index] += 1

    def run(self, on_finished: Finished) -> Outcome:
        import ray

        results = {}
        self._fill()
        while self.in_flight:
            ready, _ = ray.wait(list(self.in_flight), num_returns=1)
            item, index = self.in_flight.pop(ready[0])
            self.load[index] -= 1
            try:
                result = ray.get(ready[0])
            except Exception as exc:  # actor died beyond its retries, or the item raised
                self.attempts[item.key] = self.attempts.get(item.key, 0) + 1
                if self.attempts[item.key] <= self.max_retries:
                    self.schedule.retry(item)
                else:
                    self.schedule.gave_up(item, f"{type(exc).__name__}: {_last_line(exc)}")
            else:
                results[item.key] = result
                self.schedule.succeeded(item)
                on_finished(item, result)
            self._fill()
        return Outcome(results, self.schedule.failed)


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else ""


def connect_ray(address: str | None, num_cpus: int | None = None) -> str:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local Ray pinned to 127.0.0.1."""
    import os

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        pin_local_ray_to_loopback()
    import ray

    if ray.is_initialized():
        return "already connected"
    if address:
        ray.init(address=address, log_to_driver=True)
        return f"Ray cluster at {address}"
    started = time.perf_counter()
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        num_cpus=num_cpus,
        log_to_driver=True,
        configure_logging=True,
        logging_level="WARNING",
    )
    return f"local Ray on 127.0.0.1 ({time.perf_counter() - started:.1f} s to start)"


def pin_local_ray_to_loopback() -> None:
    """Make a single-node Ray bind every service to 127.0.0.1.

    Ray replaces a 127.0.0.1 node address with the machine's routable one unless multi-node
    clustering is off (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`); that flag is read when Ray is
    imported, so it is also applied to an already imported Ray. Child processes inherit it.
    """
    import os
    import sys

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False
