"""Read exact activations from named layers, stopping the forward pass after the deepest one.

Each value is the module's output *as it returned*, cloned inside the hook: torchvision applies
ReLU in place (`nn.ReLU(inplace=True)`, `F.relu(x, inplace=True)`, `out += identity`), so a naive
hook that keeps a reference to a conv or batch-norm output would later read post-ReLU values.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Callable, Iterable

import torch
from torch import nn

from loupe.pipeline.models.catalog import LayerCatalog, layer_name, split_layer_name

if TYPE_CHECKING:
    from loupe.pipeline.models.loaded import LoadedModel

OutputCallback = Callable[[str, torch.Tensor], None]


class _ForwardDone(BaseException):
    """Raised from a hook once every requested layer is read; BaseException so model code can't swallow it."""


class ActivationCapture:
    """Context manager holding forward hooks for a set of layers; `run` does one (partial) forward.

    With `on_output`, each layer's tensor is handed to the callback as soon as it is produced (valid
    only during the call) instead of being cloned and kept: the cheapest way to reduce activations
    on the fly.
    """

    def __init__(
        self,
        model: "LoadedModel",
        layers: Iterable[str],
        *,
        stop_early: bool = True,
        on_output: OutputCallback | None = None,
    ) -> None:
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        if not self.layers:
            raise ValueError("capture needs at least one layer name")
        catalog: LayerCatalog = model.catalog
        self.infos = [catalog[name] for name in self.layers]  # raises LayerError naming the culprit
        self.stop_early = stop_early
        self.on_output = on_output
        self._targets: dict[str, set[int]] = defaultdict(set)
        self._composite_of: dict[str, list[str]] = {}
        for info in self.infos:
            atoms = list(info.parts) if info.is_composite else [info.name]
            for atom in atoms:
                path, call = split_layer_name(atom)
                self._targets[path].add(call)
                if info.is_composite:
                    self._composite_of.setdefault(atom, []).append(info.name)
        self._handles: list = []
        self._active = False  # a plain flag: run() never touches the hook handles (torch.compile can't)
        self._reset()

    def _reset(self) -> None:
        self._calls: dict[str, int] = defaultdict(int)
        self._values: dict[str, torch.Tensor] = {}
        self._parts: dict[str, torch.Tensor] = {}
        self._pending = set(self.layers)

    def __enter__(self) -> "ActivationCapture":
        modules = dict(self.model.module.named_modules())
        for path in self._targets:
            self._handles.append(modules[path].register_forward_hook(self._hook_for(path)))
        self._active = True
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook this capture installed (idempotent)."""
        self._active = False
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook_for(self, path: str):
        def hook(_module: nn.Module, _inputs, output) -> None:
            call = self._calls[path]
            self._calls[path] += 1
            if call not in self._targets[path]:
                return
            name = layer_name(path, call)
            if name in self._composite_of:
                self._parts[name] = output.clone()
                for composite in self._composite_of[name]:
                    self._maybe_finish_composite(composite)
            if name in self._pending:
                self._deliver(name, output, clone=True)
            if self.stop_early and not self._pending:
                raise _ForwardDone

        return hook

    def _maybe_finish_composite(self, composite: str) -> None:
        info = self.model.catalog[composite]
        if composite in self._pending and all(p in self._parts for p in info.parts):
            self._deliver(composite, torch.cat([self._parts[p] for p in info.parts], dim=1), clone=False)

    def _deliver(self, name: str, tensor: torch.Tensor, clone: bool) -> None:
        self._pending.discard(name)
        if self.on_output is not None:
            self.on_output(name, tensor)
        else:
            self._values[name] = tensor.clone() if clone else tensor

    def run(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward `images` (RGB in [0, 1]) until every requested layer is read; returns name -> tensor."""
        if not self._active:
            raise RuntimeError("ActivationCapture.run called outside its `with` block")
        self._reset()
        try:
            self.model(images)
        except _ForwardDone:
            pass
        if self._pending:
            missing = sorted(self._pending)
            raise RuntimeError(f"layers {missing} produced no output in this forward pass")
        values, self._values = self._values, {}
        self._parts = {}
        return {name: values[name] for name in self.layers if name in values}


def capture(
    model: "LoadedModel",
    layers: Iterable[str],
    *,
    stop_early: bool = True,
    on_output: OutputCallback | None = None,
) -> ActivationCapture:
    """Hooks for `layers` of `model`, removed on leaving the `with` block even on error."""
    return ActivationCapture(model, layers, stop_early=stop_early, on_output=on_output)
