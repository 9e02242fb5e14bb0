"""The layer catalog: every module output that is an activation tensor, with a stable name.

A layer's name is its dotted module path (`features.14`, `layer3.1.relu`, `inception4a`), with
`@k` appended for the k-th extra call of a module that runs several times in one forward
(`layer3.1.relu@1`), and `logits` for the model's final output. Shapes come from one dry run at
the model's input size; no trained weights are needed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from loupe.pipeline.errors import LayerError, UnitError, close_matches

LOGITS = "logits"
_CHANNELS_FIRST_1D = (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)


@dataclass(frozen=True)
class LayerInfo:
    """One addressable layer: its name, what produces it, and its activation shape (batch dropped)."""

    name: str
    module_type: str
    channels: int
    spatial: tuple[int, ...]
    layout: str  # "NCHW", "NCL", "NLC" (tokens), "NC", "NCTHW"
    order: int
    parts: tuple[str, ...] = ()  # for composite layers: the layers concatenated along channels

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.channels, *self.spatial)

    @property
    def is_composite(self) -> bool:
        return bool(self.parts)


@dataclass(frozen=True)
class UnitRef:
    """A unit address `layer:unit`, validated against the catalog."""

    layer: str
    unit: int

    def __str__(self) -> str:
        return f"{self.layer}:{self.unit}"


def layer_name(module_path: str, call_index: int) -> str:
    """Name of the `call_index`-th output of the module at `module_path` ('' is the whole model)."""
    base = module_path if module_path else LOGITS
    return base if call_index == 0 else f"{base}@{call_index}"


def split_layer_name(name: str) -> tuple[str, int]:
    """Inverse of layer_name: (module path, call index)."""
    base, sep, index = name.rpartition("@")
    if sep and index.isdigit():
        path, call = base, int(index)
    else:
        path, call = name, 0
    return ("" if path == LOGITS else path), call


def describe_output(module: nn.Module, output: torch.Tensor) -> tuple[int, tuple[int, ...], str] | None:
    """Channels, spatial size and layout of an activation tensor, or None if it is not one."""
    if not isinstance(output, torch.Tensor) or not output.is_floating_point() or output.dim() < 2:
        return None
    shape = tuple(output.shape[1:])
    if output.dim() == 2:
        return shape[0], (), "NC"
    if output.dim() == 3:
        if isinstance(module, _CHANNELS_FIRST_1D):
            return shape[0], shape[1:], "NCL"
        return shape[1], shape[:1], "NLC"
    if output.dim() == 4:
        return shape[0], shape[1:], "NCHW"
    if output.dim() == 5:
        return shape[0], shape[1:], "NCTHW"
    return shape[0], shape[1:], f"NC+{output.dim() - 2}d"


class LayerCatalog:
    """Ordered mapping of layer name to LayerInfo, with helpful errors for unknown names."""

    def __init__(self, layers: list[LayerInfo], model_name: str = "model") -> None:
        self._layers = {layer.name: layer for layer in layers}
        self.model_name = model_name

    def __getitem__(self, name: str) -> LayerInfo:
        try:
            return self._layers[name]
        except KeyError:
            raise LayerError(
                f"unknown layer '{name}' in {self.model_name}{close_matches(name, self._layers)}; "
                "`loupe layers` lists them"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._layers

    def __iter__(self) -> Iterator[LayerInfo]:
        return iter(self._layers.values())

    def __len__(self) -> int:
        return len(self._layers)

    def names(self) -> list[str]:
        return list(self._layers)

    def unit(self, address: str | UnitRef) -> UnitRef:
        """Parse and validate `layer:unit`."""
        if isinstance(address, UnitRef):
            layer, unit_text = address.layer, str(address.unit)
        else:
            layer, sep, unit_text = str(address).rpartition(":")
            if not sep or not layer:
                raise UnitError(f"unit '{address}' is not of the form layer:unit (e.g. features.14:37)")
        info = self[layer]
        try:
            unit = int(unit_text)
        except ValueError:
            raise UnitError(f"unit '{address}': '{unit_text}' is not an integer channel index") from None
        check_unit(info, unit)
        return UnitRef(layer, unit)


def check_unit(info: LayerInfo, unit: int) -> None:
    if not 0 <= unit < info.channels:
        raise UnitError(
            f"unit {unit} is out of range for layer {info.name}: it has {info.channels} channels (0..{info.channels - 1})"
        )


def discover_layers(module: nn.Module, example: torch.Tensor, model_name: str = "model") -> LayerCatalog:
    """Run `module` once on `example` and record every activation tensor a module returns."""
    records: list[tuple[str, str, tuple]] = []
    calls: dict[str, int] = defaultdict(int)

    def hook_for(path: str):
        def hook(mod: nn.Module, _inputs, output) -> None:
            index = calls[path]
            calls[path] += 1
            described = describe_output(mod, output)
            if described is not None:
                records.append((layer_name(path, index), type(mod).__name__, described))

        return hook

    handles = [m.register_forward_hook(hook_for(path)) for path, m in module.named_modules()]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for handle in handles:
            handle.remove()

    layers = [
        LayerInfo(name, module_type, channels, spatial, layout, order)
        for order, (name, module_type, (channels, spatial, layout)) in enumerate(records)
    ]
    layers = _with_composites(module, layers)
    return LayerCatalog(layers, model_name)


def _with_composites(module: nn.Module, layers: list[LayerInfo]) -> list[LayerInfo]:
    """Add `<block>_pre_relu` layers for GoogLeNet-style Inception blocks (Lucid's `mixed4a_pre_relu`).

    torchvision's GoogLeNet applies ReLU functionally inside each branch's last BasicConv2d and then
    concatenates the branches, so the pre-ReLU block output is the concatenation of each branch's
    final batch-norm output, in branch order.
    """
    by_name = {layer.name: layer for layer in layers}
    result: list[LayerInfo] = []
    for layer in layers:
        parts = _inception_pre_relu_parts(module, layer.name)
        if parts and all(p in by_name for p in parts):
            infos = [by_name[p] for p in parts]
            if all(i.spatial == layer.spatial and i.layout == "NCHW" for i in infos) and sum(
                i.channels for i in infos
            ) == layer.channels:
                result.append(
                    LayerInfo(f"{layer.name}_pre_relu", "Concat(pre-ReLU branches)", layer.channels,
                              layer.spatial, layer.layout, layer.order, tuple(parts))
                )
        result.append(layer)
    return result


def _inception_pre_relu_parts(root: nn.Module, name: str) -> list[str] | None:
    if "@" in name or name == LOGITS:
        return None
    try:
        block = root.get_submodule(name)
    except AttributeError:
        return None
    branches = [getattr(block, f"branch{i}", None) for i in range(1, 5)]
    if type(block).__name__ != "Inception" or any(b is None for b in branches):
        return None
    parts = []
    for index, branch in enumerate(branches, start=1):
        last_bn = None
        for sub_path, sub in branch.named_modules():
            if hasattr(sub, "conv") and isinstance(getattr(sub, "bn", None), nn.BatchNorm2d):
                last_bn = f"{sub_path}.bn" if sub_path else "bn"
        if last_bn is None:
            return None
        parts.append(f"{name}.branch{index}.{last_bn}")
    return parts
