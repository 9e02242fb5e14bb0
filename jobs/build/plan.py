"""Turn a resolved config into work items, each sized to one storage shard and content-addressed.

A key is a hash of everything that determines an item's output (weights digest, layer, units,
kind, settings, seed, code version), so a rebuild with nothing changed finds every key already
done, and changing one layer's settings changes only that layer's keys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from loupe.jobs.build.resolve import ResolvedModel

#: Bump when a stage's algorithm changes its output for the same inputs; invalidates that stage only.
#: The render kind whose pictures get quality scores (fv_activation, fv_robustness, fv_natural_ratio).
SCORED_KIND = "channel"
#: Fresh random transforms drawn to measure a render's fv_robustness.
SCORE_TRANSFORMS = 8
CODE_VERSIONS = {"render": "render-3", "spectrum": "spectrum-1", "fields": "fields-1", "scan": "scan-3",
                 "reduce": "reduce-4", "score": "score-1"}


class _SpecDefaults:
    """What most specs share: every field is keyed, and the item needs no other item."""

    def key_fields(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def inputs(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class RenderSpec:
    """Render `units` of one layer and kind; every field changes the pictures, so all are keyed."""

    layer: str  # the layer key: the model layer, or `layer@basis` (see storage.layout.layer_key)
    kind: str
    units: tuple[int, ...]
    units_per_item: int  # the storage shard size the units were grouped by
    size: int
    steps: int
    seed: int
    images_per_unit: int = 1  # > 1 only for the diversity kind
    basis_digest: str = ""  # sha256 of the basis file; "" for channels
    param: str = "lucid"  # or "maco": phase-only over the dataset's magnitude spectrum
    spectrum_item: str = ""  # maco: the spectrum item whose partial holds the magnitude
    precision: str = "fp32"  # or "bf16" (autocast): keyed, it changes the pictures slightly
    compile: str = "off"  # torch.compile mode: speed only, never keyed

    stage: ClassVar[str] = "render"

    def key_fields(self) -> dict[str, Any]:
        fields = _without_empty(_without_empty(asdict(self), "basis_digest"), "spectrum_item")
        del fields["compile"]
        for name, default in (("param", "lucid"), ("precision", "fp32")):
            if fields[name] == default:
                del fields[name]
        return fields

    def inputs(self) -> tuple[str, ...]:
        return (self.spectrum_item,) if self.spectrum_item else ()

    def describe(self) -> str:
        return f"{self.layer}/{self.kind} units {self.units[0]}..{self.units[-1]}"


@dataclass(frozen=True)
class SpectrumSpec(_SpecDefaults):
    """MACO's magnitude: the mean Fourier magnitude of the listing's first `images` images at `size`."""

    listing: str
    size: int
    images: int

    stage: ClassVar[str] = "spectrum"

    def describe(self) -> str:
        return f"magnitude spectrum of {self.images} images at {self.size} px"


@dataclass(frozen=True)
class FieldsSpec(_SpecDefaults):
    """Probe the receptive fields of a model's scanned layers once and save them in the atlas's
    build state (`state_key`) for every scan and reduce: model compute, so it runs on a worker (a
    GPU makes it instant), never on the driver. It is preparation, not part of any version: it
    leaves no completion record and runs only while the saved fields are missing."""

    state_key: str
    layers: tuple[str, ...]

    stage: ClassVar[str] = "fields"

    def describe(self) -> str:
        return f"receptive fields of {len(self.layers)} layer(s)"


@dataclass(frozen=True)
class ScanSpec:
    """Scan images [start, stop) of the saved listing through every scanned layer of one model."""

    layers: tuple[str, ...]  # layer keys: a layer's channels and each basis scanned from one forward
    k: int
    listing: str  # the listing's fingerprint
    chunk_images: int
    pooled: bool
    shard_index: int
    shard_count: int
    start: int
    stop: int
    images_per_batch: int  # how the work is done, not what it produces: not keyed
    decode_workers: int  # likewise
    basis_digests: tuple[str, ...] = ()  # per entry of `layers`: its basis file's sha256, "" for channels
    fields_item: str = ""  # the fields item this scan waits for while the saved fields are missing: not keyed
    decode: str = "pillow"  # or "device": changes the pixels slightly, so keyed when not the default

    stage: ClassVar[str] = "scan"

    def key_fields(self) -> dict[str, Any]:
        fields = asdict(self)
        del fields["images_per_batch"], fields["decode_workers"], fields["fields_item"]
        if fields["decode"] == "pillow":
            del fields["decode"]
        return _without_empty(fields, "basis_digests")

    def inputs(self) -> tuple[str, ...]:
        return (self.fields_item,) if self.fields_item else ()

    def describe(self) -> str:
        return f"shard {self.shard_index + 1}/{self.shard_count}"


@dataclass(frozen=True)
class ReduceSpec:
    """Merge one layer's partials of a model's scan shards into that layer's units and examples
    tables, then (with `examples`) store the pictures a unit page shows.

    One reduce per layer (not per model): it folds the shards' partials of `layer` one at a time,
    so its memory is one layer's result plus one shard's layer, whatever the number of shards.
    The band samples and histograms come from one streamed read of the layer's pooled maxima,
    and the pictures from one decode of each image the layer needs (not a pass over the dataset).
    """

    layer: str  # a layer key, as in ScanSpec.layers
    layer_index: int  # position of `layer` in the scan items' layers: names its partial
    scan_items: tuple[str, ...]
    listing: str
    write_images: bool  # exactly one reduce of the build writes the dataset's images table
    examples: bool = False
    example_size: int = 96
    heatmap_size: int = 24
    quantiles: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    samples_per_band: int = 5
    histogram_bins: int = 32
    seed: int = 0
    units_per_item: int = 64  # units per stored shard of example pictures
    images_per_batch: int = 64  # the scan's: same batch shape, so pictures' activations equal the scan's
    decode_workers: int = 2  # how, not what: neither is keyed (like the scan's)
    basis_digest: str = ""  # sha256 of the basis file; "" for channels
    fields_item: str = ""  # as ScanSpec's: not keyed
    decode: str = "pillow"  # as the scan's, so example pictures show the pixels the scan saw; keyed likewise

    stage: ClassVar[str] = "reduce"

    def key_fields(self) -> dict[str, Any]:
        fields = asdict(self)
        del fields["images_per_batch"], fields["decode_workers"], fields["fields_item"]
        if fields["decode"] == "pillow":
            del fields["decode"]
        return _without_empty(fields, "basis_digest")

    def inputs(self) -> tuple[str, ...]:
        return (*self.scan_items, *((self.fields_item,) if self.fields_item else ()))

    def describe(self) -> str:
        return f"reduce {self.layer} of {len(self.scan_items)} shard(s)"


@dataclass(frozen=True)
class ScoreSpec(_SpecDefaults):
    """Divide each unit's render activation by its natural activations over the dataset.

    Needs the layer's reduce (natural max and p99) and the channel render items of the layer
    (their `fv_activation`); keyed by both, so it is redone when either changes and never
    makes a render depend on the dataset.
    """

    layer: str
    reduce_item: str
    render_items: tuple[str, ...]

    stage: ClassVar[str] = "score"

    def inputs(self) -> tuple[str, ...]:
        return (self.reduce_item, *self.render_items)

    def describe(self) -> str:
        return f"scores of {self.layer}"


def _without_empty(fields: dict[str, Any], name: str) -> dict[str, Any]:
    """Leave a basis field out of the key while it is empty, so channel items keep the keys they had."""
    if not any(fields[name]) if isinstance(fields[name], tuple) else not fields[name]:
        del fields[name]
    return fields


Spec = RenderSpec | SpectrumSpec | FieldsSpec | ScanSpec | ReduceSpec | ScoreSpec
_SPECS: dict[str, type] = {spec.stage: spec for spec in (RenderSpec, SpectrumSpec, FieldsSpec, ScanSpec, ReduceSpec,
                                                          ScoreSpec)}
#: Stages whose items prepare build state and belong to no version (no completion record, never reused).
PREPARATION = ("fields",)


@dataclass(frozen=True)
class WorkItem:
    """One unit of distributed work: small, typed and JSON-serialisable, so it travels anywhere."""

    key: str
    model_id: str
    spec: Spec = field(hash=False)
    cost: int = 1  # units rendered or images scanned, for progress and throughput

    @property
    def stage(self) -> str:
        return self.spec.stage

    def describe(self) -> str:
        return f"{self.stage} {self.model_id} {self.spec.describe()}"

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "model_id": self.model_id, "stage": self.stage, "cost": self.cost,
                "spec": asdict(self.spec)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "WorkItem":
        spec_type = _SPECS[data["stage"]]
        raw = {k: tuple(v) if isinstance(v, list) else v for k, v in data["spec"].items()}
        return cls(data["key"], data["model_id"], spec_type(**raw), int(data["cost"]))


def item_meta(item: WorkItem, **extra: Any) -> dict[str, Any]:
    """What a completion record says about the item that wrote it (for people and audits)."""
    return {"stage": item.stage, **asdict(item.spec), **extra}


def make_item(model_id: str, identity: dict[str, Any], spec: Spec, cost: int) -> WorkItem:
    """A work item keyed by everything that determines its output."""
    return WorkItem(content_key(spec.stage, {**identity, **spec.key_fields()}), model_id, spec, cost)


def content_key(stage: str, payload: dict[str, Any]) -> str:
    """`<stage>-<sha256 prefix>` of the canonical JSON of `payload` plus the stage's code version."""
    blob = json.dumps({"stage": stage, "code": CODE_VERSIONS[stage], **payload}, sort_keys=True, separators=(",", ":"))
    return f"{stage}-{hashlib.sha256(blob.encode()).hexdigest()[:40]}"


def model_identity(model: ResolvedModel) -> dict[str, Any]:
    """What about a model changes every output: its weights and how inputs are normalized."""
    return {
        "source": model.config.source,
        "weights_digest": model.model.weights_digest,
        "preprocessing": model.model.preprocessing.to_dict(),
    }


def model_record(model: ResolvedModel) -> dict[str, Any]:
    """What a version records about a model: its identity, weights, and each basis built (by layer key)."""
    record = {**model_identity(model), "weights": model.config.weights}
    bases = {layer.key: layer.basis_record() for layer in model.layers if layer.basis is not None}
    return {**record, "bases": bases} if bases else record


def unit_blocks(units: list[int], block_size: int) -> list[list[int]]:
    """Group units by storage shard: block b holds units in [b*size, (b+1)*size)."""
    blocks: dict[int, list[int]] = {}
    for unit in units:
        blocks.setdefault(unit // block_size, []).append(unit)
    return [blocks[b] for b in sorted(blocks)]


def plan_spectra(model: ResolvedModel, listing_fingerprint: str, listing_size: int, images: int) -> list[WorkItem]:
    """One spectrum item per render size that a MACO render of the model needs."""
    sizes = sorted({s.size for layer in model.layers for s in layer.render.values() if s.param == "maco"})
    count = min(images, listing_size)
    identity = {"preprocessing": model.model.preprocessing.to_dict()}  # images are decoded as the model's input
    return [make_item(model.id, identity, SpectrumSpec(listing_fingerprint, size, count), cost=count) for size in sizes]


def plan_renders(model: ResolvedModel, spectra: list[WorkItem] = ()) -> list[WorkItem]:
    """Render items: (layer key, kind, block of units); MACO renders name their spectrum item."""
    identity = model_identity(model)
    spectrum_of = {item.spec.size: item.key for item in spectra}
    items = []
    for layer in model.layers:
        for kind, settings in layer.render.items():
            for block in unit_blocks(layer.units, settings.units_per_item):
                spec = RenderSpec(
                    layer=layer.key, kind=kind, units=tuple(block), units_per_item=settings.units_per_item,
                    size=settings.size, steps=settings.steps, seed=settings.seed,
                    images_per_unit=settings.images_per_unit if kind == "diversity" else 1,
                    basis_digest=layer.basis_digest, param=settings.param, precision=settings.precision,
                    compile=settings.compile,
                    spectrum_item=spectrum_of[settings.size] if settings.param == "maco" else "",
                )
                items.append(make_item(model.id, identity, spec, cost=len(block)))
    return items


def plan_scores(model: ResolvedModel, items: list[WorkItem]) -> list[WorkItem]:
    """One score item per layer that has both a reduce and channel renders among `items`."""
    identity = model_identity(model)
    reduces = {item.spec.layer: item.key for item in items if isinstance(item.spec, ReduceSpec)}
    renders: dict[str, list[str]] = {}
    for item in items:
        if isinstance(item.spec, RenderSpec) and item.spec.kind == SCORED_KIND:
            renders.setdefault(item.spec.layer, []).append(item.key)
    return [make_item(model.id, identity, ScoreSpec(layer=layer, reduce_item=reduces[layer],
                                                    render_items=tuple(renders[layer])), cost=0)
            for layer in reduces if layer in renders]
