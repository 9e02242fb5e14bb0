"""Check a parsed config against the real models: sources, weights names, layers and units.

Runs before any compute. All problems are collected and reported together, each with its field
path, so a user fixes a config in one round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from loupe.jobs.build.config import (
    BuildConfig,
    ConfigError,
    LayerConfig,
    ModelConfig,
    RenderKindConfig,
    format_validation_error,
    parse_units,
)
from loupe.pipeline.errors import LoupeError
from loupe.pipeline.models import LayerInfo, LoadedModel, Preprocessing, load_model
from loupe.pipeline.models.basis import Basis, load_basis
from loupe.pipeline.models.sources import check_weights_kind, parse_source
from loupe.storage.layout import CHANNELS, layer_key


@dataclass
class ResolvedLayer:
    """One (layer, basis) to build: the layer's catalog entry, the basis (None: its channels), the
    units chosen, and the render settings per kind."""

    info: LayerInfo
    units: list[int]
    render: dict[str, RenderKindConfig]
    basis: Basis | None = None
    basis_name: str = CHANNELS

    @property
    def key(self) -> str:
        """The (layer, basis)'s name in the atlas and in work items: `layer`, or `layer@basis`."""
        return layer_key(self.info.name, self.basis_name)

    @property
    def width(self) -> int:
        """How many units the (layer, basis) has: the layer's channels, or the basis's units."""
        return self.basis.units if self.basis is not None else self.info.channels

    @property
    def basis_digest(self) -> str:
        return self.basis.digest if self.basis is not None else ""

    def basis_record(self) -> dict[str, Any]:
        """What an atlas records about a basis: where it came from, its kind, size and digest."""
        basis = self.basis
        assert basis is not None
        return {"layer": self.info.name, "basis": self.basis_name, "kind": basis.kind, "units": basis.units,
                "channels": basis.channels, "activation": basis.activation, "k": basis.k, "source": basis.source,
                "sha256": basis.digest}


@dataclass
class ResolvedModel:
    config: ModelConfig
    index: int
    model: LoadedModel
    layers: list[ResolvedLayer] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.config.id


def preprocessing_of(config: ModelConfig) -> Preprocessing | None:
    """The config's explicit preprocessing, or None to use what the weights/builder declare."""
    p = config.preprocessing
    if p is None:
        return None
    size = p.input_size or 224
    if p.range is not None:
        return Preprocessing.from_range(p.range[0], p.range[1], input_size=size, resize_size=p.resize_size or 0)
    if p.mean is not None:
        return Preprocessing(mean=p.mean, std=p.std, input_size=size, resize_size=p.resize_size or 0)
    return Preprocessing(input_size=size, resize_size=p.resize_size or 0)


def build_model(config: ModelConfig, *, with_weights: bool, device: str | None = None) -> LoadedModel:
    """Load a configured model; without weights only the architecture is built (for validation)."""
    return load_model(
        config.source,
        config.weights if with_weights else "none",
        preprocessing=preprocessing_of(config),
        device=device,
        storage_options=config.storage_options,
        state_dict_key=config.state_dict_key,
        strip_prefix=config.strip_prefix,
        model_kwargs=config.model_kwargs,
    )


def resolve_build(config: BuildConfig, *, with_weights: bool, device: str | None = None) -> list[ResolvedModel]:
    """Resolve every model, layer and unit of `config`; raise one ConfigError listing all problems."""
    problems: list[str] = []
    resolved: list[ResolvedModel] = []
    for index, model_config in enumerate(config.models):
        where = f"models[{index}]"
        try:
            check_weights_kind(parse_source(model_config.source), model_config.weights)
            model = build_model(model_config, with_weights=with_weights, device=device)
        except LoupeError as exc:
            problems.append(f"{where} ({model_config.id}): {exc}")
            continue
        entry = ResolvedModel(model_config, index, model)
        layer_configs = model_config.layer_configs()
        if layer_configs is None:
            layer_configs = [LayerConfig(name=info.name, units=model_config.units) for info in model.catalog]
            paths = [f"{where}.layers (all: {c.name})" for c in layer_configs]
        else:
            paths = [f"{where}.layers[{i}]" for i in range(len(layer_configs))]
        seen: set[str] = set()
        for path, layer_config in zip(paths, layer_configs):
            try:
                entry.layers += _resolve_layer(config, model, layer_config, path, seen)
            except (LoupeError, ConfigError) as exc:
                problems.append(f"{path}: {exc}" if not str(exc).startswith(path) else str(exc))
        resolved.append(entry)
    if problems:
        raise ConfigError(f"config has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return resolved


def _resolve_layer(config: BuildConfig, model: LoadedModel, layer: LayerConfig, path: str,
                   seen: set[str]) -> list[ResolvedLayer]:
    """The layer's channels (unless `channels: false`) and each of its bases, checked against the layer."""
    info = model.layer(layer.name)
    if info.name in seen:
        raise ConfigError(f"{path}: layer '{info.name}' is listed twice")
    seen.add(info.name)
    if layer.bases and "@" in info.name:
        raise ConfigError(f"{path}: a layer whose name has '@' cannot have bases")
    kinds = _render_kinds(config, [layer.render], info, path)
    views = []
    if layer.channels:
        units = parse_units(layer.units, info.channels, f"{path}.units")
        if not units:
            raise ConfigError(f"{path}.units: no units selected")
        views.append(ResolvedLayer(info, units, kinds))
    for index, entry in enumerate(layer.bases):
        where = f"{path}.bases[{index}]"
        basis = load_basis(entry.url, info.name, info.channels, activation=None if entry.activation == "auto"
                           else entry.activation, k=entry.k, storage_options=entry.storage_options)
        units = parse_units(entry.units, basis.units, f"{where}.units")
        if not units:
            raise ConfigError(f"{where}.units: no units selected")
        views.append(ResolvedLayer(info, units, _render_kinds(config, [layer.render, entry.render], info, where),
                                   basis, entry.name))
    return views


def _render_kinds(config: BuildConfig, overrides: list[dict[str, dict[str, Any]]], info: LayerInfo,
                  path: str) -> dict[str, RenderKindConfig]:
    """The build's render settings per kind with each override applied in turn (layer, then basis)."""
    kinds = {kind: getattr(config.render, kind) for kind in config.render.enabled_kinds()}
    for override in overrides:
        for kind, values in override.items():
            if kind in kinds or values.get("enabled"):
                kinds[kind] = _merged(kinds.get(kind, getattr(config.render, kind)), values, f"{path}.render.{kind}")
    kinds = {k: v for k, v in kinds.items() if v.enabled}
    scanning = config.scan is not None and config.scan.enabled
    for kind, settings in kinds.items():
        if settings.param == "maco" and not scanning:
            raise ConfigError(f"{path}.render.{kind}.param: maco needs a scan dataset (scan.dataset, enabled): "
                              "its magnitude spectrum is estimated from the dataset's images")
    if "diversity" in kinds and kinds["diversity"].images_per_unit < 2:
        raise ConfigError(f"{path}.render.diversity.images_per_unit: a diversity set needs at least 2 images per unit")
    if "neuron" in kinds and info.layout not in ("NCHW", "NLC"):
        kinds.pop("neuron")
    return kinds


def _merged(base: RenderKindConfig, override: dict[str, Any], path: str) -> RenderKindConfig:
    if not override:
        return base
    try:
        return RenderKindConfig.model_validate({**base.model_dump(), **override})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path).replace("\n  ", " ").replace(" has 1 error(s):", "")) from None
