"""Run work items for one model: the model is loaded once and stays warm; outputs go straight to storage.

`ItemRunner` is plain Python so the same code runs in-process (tests, benchmarks, a laptop without
Ray) and as a Ray actor (jobs/execute.py wraps it). It returns only small metadata per item.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from loupe.jobs.build.config import ModelConfig
from loupe.jobs.build.plan import SCORE_TRANSFORMS, SCORED_KIND, RenderSpec, WorkItem, item_meta
from loupe.jobs.build.resolve import build_model
from loupe.storage import AtlasWriter
from loupe.storage.layout import split_layer_key

if TYPE_CHECKING:
    import pyarrow as pa

    from loupe.pipeline.models.basis import Basis


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

        # For scans (exact whatever the thread count); renders pin their own count (RenderSettings.threads)
        # so an item's bytes do not depend on which executor ran it.
        if threads:
            torch.set_num_threads(max(1, int(threads)))
        self.config = ModelConfig.model_validate(model_config)
        self.model = build_model(self.config, with_weights=True, device=device)
        self.writer = AtlasWriter.resume(atlas_url, version, storage_options)
        self.scan_context = scan_context or {}
        self._bases: dict[tuple[str, str], Any] = {}

    def basis(self, layer_key: str, digest: str) -> "Basis | None":
        """The basis a layer key names (None for channels), loaded once per actor from the config's file
        and refused if the file no longer has the digest the build planned with."""
        from loupe.pipeline.models.basis import BasisError, load_basis

        layer, name = split_layer_key(layer_key)
        if not digest:
            return None
        cached = self._bases.get((layer_key, digest))
        if cached is None:
            entry = next((c.basis(name) for c in self.config.layer_configs() or []
                          if self.model.layer(c.name).name == layer and name in {b.name for b in c.bases}), None)
            if entry is None:
                raise BasisError(f"model {self.config.id} has no basis {name!r} for layer {layer} in its config")
            cached = load_basis(entry.url, layer, self.model.catalog[layer].channels,
                                activation=None if entry.activation == "auto" else entry.activation, k=entry.k,
                                storage_options=entry.storage_options)
            if cached.digest != digest:
                raise BasisError(f"basis file {entry.url} changed during the build (sha256 {cached.digest[:16]}..., "
                                 f"planned with {digest[:16]}...); rerun the build")
            self._bases[(layer_key, digest)] = cached
        return cached

    def ping(self) -> dict[str, Any]:
        """Who am I: lets the driver see where actors landed (pid, device)."""
        return {"pid": os.getpid(), "device": str(self.model.device)}

    def run(self, item: WorkItem) -> dict[str, Any]:
        """Do one item unless its completion record already exists (a retried item is never duplicated)."""
        started = time.perf_counter()
        if self.writer.is_complete(item.key):
            return {"key": item.key, "status": "already-done", "cost": item.cost, "seconds": 0.0}
        extra = self.execute(item)
        return {"key": item.key, "status": "done", "cost": item.cost,
                "seconds": time.perf_counter() - started, "pid": os.getpid(), **extra}

    def execute(self, item: WorkItem) -> dict[str, Any]:
        """Compute and write one item by its stage; returns small metadata for the driver."""
        if item.stage == "render":
            return self._render(item)
        if item.stage == "spectrum":
            from loupe.jobs.build.spectrum_stage import run_spectrum

            return run_spectrum(self, item)
        if item.stage == "score":
            from loupe.jobs.build.score_stage import run_score

            return run_score(self, item)
        from loupe.jobs.build.scan_stage import run_scan_stage

        return run_scan_stage(self, item)

    def _render(self, item: WorkItem) -> dict[str, Any]:
        """Render the item's units in one call and write them as one shard object (units need not be
        consecutive: each object is encoded once from all of them, so none is overwritten)."""
        from loupe.pipeline.featurevis import RenderSettings, render_units

        spec: RenderSpec = item.spec
        per_unit = spec.images_per_unit
        settings = RenderSettings(size=spec.size, steps=spec.steps, images_per_unit=per_unit, param=spec.param,
                                  precision=spec.precision, compile=spec.compile)
        basis = self.basis(spec.layer, spec.basis_digest)
        magnitude = None
        if spec.param == "maco":
            from loupe.jobs.build.spectrum_stage import load_magnitude

            magnitude = load_magnitude(self.writer, spec.spectrum_item)
        renders = render_units(self.model, split_layer_key(spec.layer)[0], spec.units, spec.kind, settings,
                               seed=spec.seed, images_per_step=len(spec.units) * per_unit, basis=basis,
                               magnitude=magnitude)
        images, objective = renders.pictures(), renders.activations  # MACO: RGBA, alpha = transparency map
        if spec.kind == "diversity":
            images = images.reshape(len(spec.units), per_unit, *images.shape[1:])
            objective = objective.reshape(len(spec.units), per_unit)
        with self.writer.item(item.key, item_meta(item)) as out:
            out.write_renders(self.config.id, spec.layer, spec.kind, list(spec.units), images, objective)
            if spec.kind == SCORED_KIND:
                out.write_units(self.config.id, spec.layer, self._scores(spec, images[..., :3], basis))
        return {}

    def _scores(self, spec: RenderSpec, images, basis: "Basis | None") -> "pa.Table":
        """fv_activation and fv_robustness of each unit's render (see pipeline/featurevis/scores.py)."""
        import numpy as np
        import pyarrow as pa

        from loupe.pipeline.featurevis import score_renders

        scores = score_renders(self.model, split_layer_key(spec.layer)[0], list(spec.units), images,
                               transforms=SCORE_TRANSFORMS, seed=spec.seed, images_per_step=len(spec.units),
                               basis=basis)
        return pa.table({"unit": pa.array(np.asarray(spec.units, dtype=np.int32)),
                         "fv_activation": pa.array(scores.activation.astype(np.float64)),
                         "fv_robustness": pa.array(scores.robustness.astype(np.float64))})
