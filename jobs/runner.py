"""Run work items for one model: the model is loaded once and stays warm; outputs go straight to storage.

`ItemRunner` is plain Python so the same code runs in-process (tests, benchmarks, a laptop without
Ray) and as a Ray actor (jobs/execute.py wraps it). It returns only small metadata per item.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from loupe.jobs.config import ModelConfig
from loupe.jobs.plan import WorkItem
from loupe.jobs.resolve import build_model
from loupe.storage import AtlasWriter

#: Config kind names -> pipeline.featurevis kind names.
FEATUREVIS_KINDS = {"channel": "channel", "neuron": "neuron", "negative": "negative_channel", "diversity": "diversity"}


class ItemRunner:
    """Holds one warm model and a writer for the version being built."""

    def __init__(
        self,
        model_config: dict[str, Any],
        atlas_url: str,
        version: str,
        storage_options: dict[str, Any] | None = None,
        *,
        device: str | None = None,
        threads: int | None = None,
        scan_context: dict[str, Any] | None = None,
    ) -> None:
        import torch

        if threads:
            torch.set_num_threads(max(1, int(threads)))
        self.config = ModelConfig.model_validate(model_config)
        self.model = build_model(self.config, with_weights=True, device=device)
        self.writer = AtlasWriter.resume(atlas_url, version, storage_options)
        self.scan_context = scan_context or {}

    def ping(self) -> dict[str, Any]:
        """Who am I: lets the driver see where actors landed (pid, device)."""
        return {"pid": os.getpid(), "device": str(self.model.device)}

    def run(self, item: WorkItem) -> dict[str, Any]:
        """Do one item unless its completion record already exists (a retried item is never duplicated)."""
        started = time.perf_counter()
        if self.writer.is_complete(item.key):
            return {"key": item.key, "status": "already-done", "cost": item.cost, "seconds": 0.0}
        if item.stage == "render":
            extra = self._render(item)
        else:
            from loupe.jobs.scan_items import run_scan_stage

            extra = run_scan_stage(self, item)
        return {"key": item.key, "status": "done", "cost": item.cost,
                "seconds": time.perf_counter() - started, "pid": os.getpid(), **extra}

    def _render(self, item: WorkItem) -> dict[str, Any]:
        from loupe.pipeline.featurevis import RenderSettings, render_units

        spec = item.spec
        kind = FEATUREVIS_KINDS[spec["kind"]]
        per_unit = spec["images"] if kind == "diversity" else 1
        extra = {"diversity": per_unit} if kind == "diversity" else {}
        settings = RenderSettings(size=spec["size"], steps=spec["steps"], **extra)
        renders = render_units(self.model, spec["layer"], spec["units"], kind, settings,
                               seed=spec["seed"], batch_size=len(spec["units"]) * per_unit)
        images, objective = renders.images, renders.activations
        if kind == "diversity":
            images = images.reshape(len(spec["units"]), per_unit, *images.shape[1:])
            objective = objective.reshape(len(spec["units"]), per_unit)
        units = np.asarray(spec["units"])
        with self.writer.item(item.key, {"stage": "render", **spec}) as out:
            for start, stop in contiguous_runs(units):
                out.write_render_block(self.config.id, spec["layer"], spec["kind"], int(units[start]),
                                       images[start:stop], objective[start:stop])
        return {}


def contiguous_runs(units: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) positions of runs of consecutive unit indices, e.g. [3,4,5,9] -> [(0,3),(3,4)]."""
    if len(units) == 0:
        return []
    breaks = np.flatnonzero(np.diff(units) != 1) + 1
    edges = [0, *breaks.tolist(), len(units)]
    return list(zip(edges[:-1], edges[1:]))
