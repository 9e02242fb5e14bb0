"""The whole build, in order: config -> plan -> (render | scan) -> reduce -> publish.

Everything that can fail cheaply (config, models, layers, units, storage, dataset listing) fails
before the first item runs. A build resumes an interrupted draft of the same config, reuses every
finished item of the published version, and publishes only when every planned item is complete.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from loupe.jobs import execute, scan_items
from loupe.jobs.config import BuildConfig
from loupe.jobs.plan import CODE_VERSIONS, WorkItem, model_identity, plan_renders
from loupe.jobs.progress import BuildSummary, Progress
from loupe.jobs.resolve import ResolvedModel, resolve_build
from loupe.storage import AtlasWriter, PublishConflictError, check_writable, current_version, item_keys, list_versions
from loupe.storage.checksums import canonical_json
from loupe.storage.manifest import config_digest


@dataclass
class BuildPlan:
    config: BuildConfig
    models: list[ResolvedModel]
    items: dict[str, list[WorkItem]]  # model id -> its render and scan items, then its reduce item last
    listing: Any = None

    def all_keys(self) -> set[str]:
        return {item.key for items in self.items.values() for item in items}


def make_plan(config: BuildConfig, *, device: str | None = None) -> BuildPlan:
    """Validate against storage and the real models, list the dataset once, and key every item."""
    check_writable(config.atlas.url, config.atlas.storage_options)
    listing = scan_items.list_dataset(config.scan) if config.scan and config.scan.enabled else None
    models = resolve_build(config, with_weights=True, device=device)
    items: dict[str, list[WorkItem]] = {}
    for index, model in enumerate(models):
        planned = plan_renders(model)
        if listing is not None:
            planned += scan_items.plan_scan(model, config.scan, listing, write_images=index == 0)
        items[model.id] = planned
    return BuildPlan(config, models, items, listing)


def config_fingerprint(config: BuildConfig) -> dict:
    return json.loads(canonical_json(config.model_dump(mode="json")))


def run_build(
    config: BuildConfig,
    *,
    executor: str = "ray",
    address: str | None = None,
    device: str | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
    threads: int | None = None,
) -> BuildSummary:
    """Build and publish the atlas `config` describes; returns what happened."""
    started = time.perf_counter()
    summary = BuildSummary()
    plan = make_plan(config, device=device)
    url, options = config.atlas.url, config.atlas.storage_options
    wanted = plan.all_keys()
    summary.planned = len(wanted)
    for model in plan.models:
        if model.config.weights.strip().lower() == "none":
            summary.notes.append(
                f"model {model.id} uses RANDOM weights (weights: none): its pictures show an untrained network"
            )

    published = current_version(url, options)
    fingerprint = config_fingerprint(config)
    if published and _unchanged(url, published, wanted, config_digest(fingerprint), options):
        summary.version, summary.unchanged, summary.reused = published, True, len(wanted)
        summary.seconds = time.perf_counter() - started
        log(f"nothing changed: version {published} already holds all {len(wanted)} items")
        return summary

    writer = _open_writer(plan, fingerprint, published)
    summary.version = writer.version
    _declare_arrays(writer, plan)  # before reuse: an item is reused only into arrays of the same layout
    done = writer.completed_items() & wanted
    summary.already_done = len(done)
    for source in _reuse_sources(url, options, published, writer.version):
        missing = wanted - done
        if not missing:
            break
        reused = writer.reuse_items(missing, source=source)
        summary.reused += len(reused)
        done |= reused

    if executor == "ray":
        log(f"executing on {execute.connect_ray(address)}")
    for model in plan.models:
        model_items = plan.items[model.id]
        work = [i for i in model_items if i.key not in done and i.stage != "reduce"]
        reduce = [i for i in model_items if i.stage == "reduce" and i.key not in done]
        failed: dict[str, str] = {}
        if work:
            failed = _execute(work, model, plan, writer, config, executor, progress, model.id, summary, threads).failed
        scans_failed = any(i.stage == "scan" and i.key in failed for i in work)
        if reduce and not scans_failed:  # a reduce reads every scan shard's partial
            failed.update(_execute(reduce, model, plan, writer, config, executor, progress, f"{model.id} reduce",
                                   summary, threads).failed)
        summary.failed += sorted(failed)
        for key, reason in sorted(failed.items()):
            log(f"item {key} failed: {reason}")

    summary.seconds = time.perf_counter() - started
    if summary.failed:
        summary.notes.append("rerun the same command to retry the failed items; finished items are kept")
        return summary
    try:
        writer.publish(expected_items=wanted)
        summary.published = True
    except PublishConflictError as exc:
        summary.notes.append(str(exc))
    summary.seconds = time.perf_counter() - started
    return summary


def _execute(items, model, plan, writer, config, executor, progress, desc, summary, threads) -> execute.Outcome:
    runner_args = {
        "model_config": model.config.model_dump(mode="json"),
        "atlas_url": config.atlas.url,
        "version": writer.version,
        "storage_options": config.atlas.storage_options,
        "scan_context": scan_items.scan_context(config.scan, plan.listing),
    }
    if any(item.stage == "scan" for item in items):
        # Crop boxes depend only on the architecture: probe once here and share them through
        # storage (small constructor arguments keep Ray actors restartable), not once per actor.
        runner_args["scan_context"]["receptive_fields_url"] = scan_items.save_receptive_fields(writer, model)
    bar = Progress(len(items), sum(i.cost for i in items), desc, enabled=progress)

    def finished(item: WorkItem, result: dict[str, Any]) -> None:
        if result.get("status") == "done":
            summary.done += 1
        else:
            summary.already_done += 1
        if item.stage == "render":
            summary.units_rendered += item.cost
        elif item.stage == "scan":
            summary.images_scanned += int(result.get("images", 0))
            summary.skipped_images += int(result.get("skipped", 0))
        bar.advance(item.cost)

    try:
        if executor == "ray":
            return execute.run_on_ray(items, runner_args, finished, config.resources)
        return execute.run_in_process(items, {**runner_args, "threads": threads}, finished, config.resources.max_retries)
    finally:
        bar.close()


def _unchanged(url: str, version: str, wanted: set[str], config_sha: str, options: dict) -> bool:
    versions = {v.version: v for v in list_versions(url, options)}
    info = versions.get(version)
    return info is not None and info.config_sha256 == config_sha and item_keys(url, version, options) == wanted


def _open_writer(plan: BuildPlan, fingerprint: dict, published: str | None) -> AtlasWriter:
    """Resume the newest interrupted draft of this same config on top of the same base, else start one."""
    config = plan.config
    url, options = config.atlas.url, config.atlas.storage_options
    sha = config_digest(fingerprint)
    for info in reversed(list_versions(url, options)):
        if info.status == "building" and info.config_sha256 == sha:
            writer = AtlasWriter.resume(url, info.version, options)
            if writer.base_version == published:
                return writer
    models = {m.id: {**model_identity(m), "weights": m.config.weights} for m in plan.models}
    return AtlasWriter.create(url, config=fingerprint, models=models, code_version=json.dumps(CODE_VERSIONS, sort_keys=True),
                              storage_options=options, base_version=published)


def _reuse_sources(url: str, options: dict, published: str | None, own: str) -> list[str]:
    """Where finished items may be copied from: the published version, then newer unpublished drafts."""
    sources = [published] if published else []
    drafts = [v.version for v in list_versions(url, options) if v.status in ("building", "complete") and v.version != own]
    return sources + sorted(drafts, reverse=True)[:3]


def _declare_arrays(writer: AtlasWriter, plan: BuildPlan) -> None:
    for model in plan.models:
        for layer in model.layers:
            for kind, settings in layer.render.items():
                writer.declare_renders(
                    model.id, layer.info.name, kind, n_units=layer.info.channels, height=settings.size,
                    width=settings.size, units_per_shard=settings.batch_size,
                    samples=settings.images if kind == "diversity" else None,
                )
        if plan.listing is not None:
            scan_items.declare_scan_arrays(writer, model, plan.config.scan, plan.listing)
