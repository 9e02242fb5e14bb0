"""The whole build, in order: config -> plan -> (render | scan) -> reduce -> publish.

Everything that can fail cheaply fails before the first item runs, and in this order, so a typo
never touches storage: config, then models, layers and units, then storage (reachable, enforces
conditional writes), then the dataset listing. The atlas's state is read once (one snapshot). A
build owns its draft through a lease: it resumes an interrupted draft of the same config only if
no live build holds it (else it stops, naming the holder), publishes a sealed-but-unpublished
version as it is, and otherwise starts a new version that copies every finished item it can.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from loupe.jobs.build import execute, scan_plan, shared_state
from loupe.jobs.build.config import BuildConfig
from loupe.jobs.build.plan import (
    CODE_VERSIONS,
    PREPARATION,
    FieldsSpec,
    WorkItem,
    model_record,
    plan_renders,
    plan_scores,
    plan_spectra,
)
from loupe.storage.build_state import BuildState
from loupe.jobs.build.progress import BuildSummary, Progress
from loupe.jobs.build.resolve import ResolvedModel, resolve_build
from loupe.storage import AtlasState, AtlasWriter, PublishConflictError, VersionStatus, check_writable, item_keys, read_state
from loupe.storage.checksums import canonical_json
from loupe.storage.lease import DEFAULT_TTL_S
from loupe.storage.manifest import config_digest
from loupe.storage.objects import ObjectStore
from loupe.storage.probe import require_conditional_writes
from loupe.storage.urls import resolve

#: How long a build's draft lease lasts without a heartbeat (renewed every third of it).
LEASE_TTL_S = DEFAULT_TTL_S
#: Recorded in every version; "nothing changed" needs the same item keys and the same code version.
CODE_VERSION = json.dumps(CODE_VERSIONS, sort_keys=True)


@dataclass(frozen=True)
class Execution:
    """How a build runs its items; nothing here changes an output, so none of it is keyed."""

    executor: str = "ray"  # "ray", or "local": every item in this process
    address: str | None = None  # Ray cluster address (default: RAY_ADDRESS, else a local Ray)
    progress: bool | None = None
    threads: int | None = None  # torch threads of the in-process runner (scans; renders pin their own)
    log: Callable[[str], None] = print


@dataclass
class BuildPlan:
    config: BuildConfig
    models: list[ResolvedModel]
    items: dict[str, list[WorkItem]]  # model id -> its render, scan, reduce (one per layer) and score items
    listing: Any = None

    def all_keys(self) -> set[str]:
        """The keys of the items the version holds (preparation items such as fields are not among them)."""
        return {item.key for items in self.items.values() for item in items if item.stage not in PREPARATION}


def make_plan(config: BuildConfig, *, device: str | None = None) -> BuildPlan:
    """Check the real models, then storage, then list the dataset once, and key every item.

    Models, layers and units come first: their errors must not create an atlas folder or list a
    (possibly huge) dataset.
    """
    models = resolve_build(config, with_weights=True, device=device)
    check_writable(config.atlas.url, config.atlas.storage_options)
    require_conditional_writes(ObjectStore(resolve(config.atlas.url, config.atlas.storage_options)))
    listing = scan_plan.list_dataset(config.scan) if config.scan and config.scan.enabled else None
    items: dict[str, list[WorkItem]] = {}
    for index, model in enumerate(models):
        spectra = plan_spectra(model, listing.fingerprint, len(listing), config.render.spectrum_images) \
            if listing is not None else []
        planned = spectra + plan_renders(model, spectra)
        if listing is not None:
            planned += scan_plan.plan_scan(model, config.scan, listing, write_images=index == 0)
            planned += plan_scores(model, planned)
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
    run = Execution(executor, address, progress, threads, log)
    plan = make_plan(config, device=device)
    wanted = plan.all_keys()
    summary = BuildSummary(planned=len(wanted))
    summary.notes += [f"model {m.id} uses RANDOM weights (weights: none): its pictures show an untrained network"
                      for m in plan.models if m.config.weights.strip().lower() == "none"]
    summary.notes += [note for m in plan.models for note in m.model.notes]
    state = read_state(config.atlas.url, config.atlas.storage_options)
    if _unchanged(state, wanted):
        summary.version, summary.unchanged, summary.reused = state.current, True, len(wanted)
        log(f"nothing changed: version {state.current} already holds all {len(wanted)} items with this code version "
            "(decided on item keys and code version; settings that change no output, such as resources, are not "
            "compared, so the version's recorded config may differ from this one in those)")
    else:
        writer = _open_writer(plan, state, config_fingerprint(config), wanted)
        try:
            writer.lease.start_heartbeat()
            _build_draft(plan, state, writer, summary, run)
        finally:
            writer.release()
    summary.seconds = time.perf_counter() - started
    return summary


def _build_draft(plan: BuildPlan, state: AtlasState, writer: AtlasWriter, summary: BuildSummary,
                 run: Execution) -> None:
    """Finish the draft this build owns and publish it, unless an item failed."""
    summary.version = writer.version
    if writer.is_sealed():
        summary.already_done = summary.planned
        run.log(f"publishing version {writer.version}: an earlier build sealed it but stopped before the pointer swap")
    else:
        _run_items(plan, state, writer, summary, run)
    if summary.failed:
        summary.notes.append("rerun the same command to retry the failed items; finished items are kept")
        return
    try:
        writer.publish(expected_items=plan.all_keys())
        summary.published = True
    except PublishConflictError as exc:
        summary.notes.append(str(exc))


_STAGE_ORDER = {"fields": 0, "spectrum": 1, "scan": 2, "reduce": 3, "render": 4, "score": 5}


def _run_items(plan: BuildPlan, state: AtlasState, writer: AtlasWriter, summary: BuildSummary, run: Execution) -> None:
    """Reuse what exists, then execute the rest; Ray starts only if some item is left to run."""
    done = _reuse(plan, state, writer, summary)
    if run.executor == "ray" and plan.all_keys() - done:
        run.log(f"executing on {execute.connect_ray(run.address)}")
    for model in plan.models:
        # Scans first, so each layer's reduce (which waits for its scan shards: execute.Schedule)
        # can start while render items are still running.
        todo = sorted((i for i in plan.items[model.id] if i.key not in done and i.stage not in PREPARATION),
                      key=lambda i: _STAGE_ORDER[i.stage])
        todo = _preparation(plan.items[model.id], todo, writer) + todo
        failed = _execute(todo, model, plan, writer, summary, run, model.id).failed if todo else {}
        # A draft deleted or taken over while items ran explains any failure better than the failures do.
        writer.lease.renew()
        summary.failed += sorted(failed)
        for key, reason in sorted(failed.items()):
            run.log(f"item {key} failed: {reason}")


def _preparation(items: list[WorkItem], todo: list[WorkItem], writer: AtlasWriter) -> list[WorkItem]:
    """The fields items the remaining scans and reduces need: only while their saved fields are
    missing. A saved copy is read back (verified) here, so a bad one fails the build before any item."""
    if not any(item.stage in ("scan", "reduce") for item in todo):
        return []
    state = BuildState.of(writer)
    return [item for item in items if isinstance(item.spec, FieldsSpec)
            and shared_state.load_receptive_fields(state, item.spec.state_key) is None]


def _reuse(plan: BuildPlan, state: AtlasState, writer: AtlasWriter, summary: BuildSummary) -> set[str]:
    """Keys already done in the draft or copied from earlier versions; the rest must be computed."""
    wanted = plan.all_keys()
    _declare_arrays(writer, plan)  # before reuse: an item is reused only into arrays of the same layout
    done = writer.completed_items() & wanted
    summary.already_done = len(done)
    for source in _reuse_sources(state, writer.version):
        missing = wanted - done
        if not missing:
            break
        reused = writer.reuse_items(missing, source=source)
        summary.reused += len(reused)
        done |= reused
    return done


def _runner_args(plan: BuildPlan, model: ResolvedModel, writer: AtlasWriter, items: list[WorkItem]) -> dict[str, Any]:
    """Small, JSON-able constructor arguments, so Ray can restart an actor from them alone."""
    config = plan.config
    args = {
        "model_config": model.config.model_dump(mode="json"),
        "atlas_url": config.atlas.url,
        "version": writer.version,
        "storage_options": config.atlas.storage_options,
        "scan_context": scan_plan.scan_context(config.scan, plan.listing),
    }
    if any(item.stage in ("scan", "reduce") for item in items):
        # Crop boxes (scans, and example pictures in reduces) depend only on the architecture: a
        # fields item probes them once on a worker and every scan and reduce reads them by this key.
        args["scan_context"]["receptive_fields"] = shared_state.receptive_fields_key(model)[0]
    return args


def _execute(items: list[WorkItem], model: ResolvedModel, plan: BuildPlan, writer: AtlasWriter,
             summary: BuildSummary, run: Execution, desc: str) -> execute.Outcome:
    runner_args = _runner_args(plan, model, writer, items)
    bar = Progress(len(items), desc, enabled=run.progress)

    def finished(item: WorkItem, result: dict[str, Any]) -> None:
        summary.count(item.stage, item.cost, result)
        bar.advance(item.stage, item.cost)

    resources = plan.config.resources
    try:
        if run.executor == "ray":
            return execute.run_on_ray(items, runner_args, finished, resources)
        return execute.run_in_process(items, {**runner_args, "threads": run.threads}, finished, resources.max_retries)
    finally:
        bar.close()


def _unchanged(state: AtlasState, wanted: set[str]) -> bool:
    """The published version already holds exactly these items, made by this code version."""
    info = state.info(state.current)
    return info is not None and info.code_version == CODE_VERSION and state.current_items == wanted


def _open_writer(plan: BuildPlan, state: AtlasState, fingerprint: dict, wanted: set[str]) -> AtlasWriter:
    """Own the draft this build continues, or a new one.

    In order: a sealed, never-published version of exactly these items on top of the published
    version (a build stopped between seal and pointer swap) is published as it is; else the newest
    interrupted draft of this config on the same base is resumed; else a new version starts.
    Taking the lease of a version that a live build holds raises LeaseHeldError, naming it.
    """
    config = plan.config
    url, options = config.atlas.url, config.atlas.storage_options
    sha = config_digest(fingerprint)
    for info in state.unpublished():
        if info.base_version != state.current or info.code_version != CODE_VERSION:
            continue
        if info.status is VersionStatus.COMPLETE and item_keys(url, info.version, options) == wanted:
            return AtlasWriter.resume(url, info.version, options, take_lease=True, lease_ttl_s=LEASE_TTL_S)
        if info.status is VersionStatus.BUILDING and info.config_sha256 == sha:
            return AtlasWriter.resume(url, info.version, options, take_lease=True, lease_ttl_s=LEASE_TTL_S)
    models = {m.id: model_record(m) for m in plan.models}
    return AtlasWriter.create(url, config=fingerprint, models=models, code_version=CODE_VERSION,
                              storage_options=options, base_version=state.current, lease_ttl_s=LEASE_TTL_S)


def _reuse_sources(state: AtlasState, own: str) -> list[str]:
    """Where finished items may be copied from: the published version, then the newest unpublished ones."""
    sources = [state.current] if state.current else []
    return sources + [v.version for v in state.unpublished() if v.version != own][:3]


def _declare_arrays(writer: AtlasWriter, plan: BuildPlan) -> None:
    with writer.declaring():
        _declare_each_array(writer, plan)


def _declare_each_array(writer: AtlasWriter, plan: BuildPlan) -> None:
    for model in plan.models:
        for layer in model.layers:
            for kind, settings in layer.render.items():
                writer.declare_renders(
                    model.id, layer.key, kind, n_units=layer.width, height=settings.size,
                    width=settings.size, units_per_shard=settings.units_per_item,
                    samples=settings.images_per_unit if kind == "diversity" else None,
                    channels=4 if settings.param == "maco" else 3,
                )
        if plan.listing is not None:
            scan_plan.declare_scan_arrays(writer, model, plan.config.scan, plan.listing)
