"""Turn a resolved config into work items, each sized to one storage shard and content-addressed.

A key is a hash of everything that determines an item's output (weights digest, layer, units,
kind, settings, seed, code version), so a rebuild with nothing changed finds every key already
done, and changing one layer's settings changes only that layer's keys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from loupe.jobs.resolve import ResolvedModel

#: Bump when a stage's algorithm changes its output for the same inputs; invalidates that stage only.
CODE_VERSIONS = {"render": "render-1", "scan": "scan-2", "reduce": "reduce-1"}


@dataclass(frozen=True)
class WorkItem:
    """One unit of distributed work; `spec` holds only JSON-able values so it travels anywhere."""

    key: str
    stage: str  # "render", "scan" or "reduce"
    model_id: str
    spec: dict[str, Any] = field(hash=False)
    cost: int = 1  # units rendered or images scanned, for progress and throughput

    def describe(self) -> str:
        s = self.spec
        if self.stage == "render":
            return f"render {self.model_id}/{s['layer']}/{s['kind']} units {s['units'][0]}..{s['units'][-1]}"
        if self.stage == "scan":
            return f"scan {self.model_id} shard {s['shard_index'] + 1}/{s['shard_count']}"
        return f"reduce {self.model_id}"


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


def unit_blocks(units: list[int], block_size: int) -> list[list[int]]:
    """Group units by storage shard: block b holds units in [b*size, (b+1)*size)."""
    blocks: dict[int, list[int]] = {}
    for unit in units:
        blocks.setdefault(unit // block_size, []).append(unit)
    return [blocks[b] for b in sorted(blocks)]


def plan_renders(model: ResolvedModel) -> list[WorkItem]:
    identity = model_identity(model)
    items = []
    for layer in model.layers:
        for kind, settings in layer.render.items():
            for block in unit_blocks(layer.units, settings.batch_size):
                spec = {
                    "layer": layer.info.name,
                    "kind": kind,
                    "units": block,
                    "block_size": settings.batch_size,
                    "size": settings.size,
                    "steps": settings.steps,
                    "seed": settings.seed,
                    "images": settings.images if kind == "diversity" else 1,
                }
                key = content_key("render", {**identity, **spec})
                items.append(WorkItem(key, "render", model.id, spec, cost=len(block)))
    return items
