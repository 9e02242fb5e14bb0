"""A model ready for Loupe: weights loaded, eval mode, on its device, with its preprocessing.

`load_model` is the one entry point from a source string and a weights choice; every error
(unknown builder, unreadable weights, mismatched keys) is raised here, before any heavy work.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping

import torch
from torch import nn

from loupe.pipeline.errors import ModelSourceError, WeightsError
from loupe.pipeline.models import sources
from loupe.pipeline.models.bundled import bundled_weights
from loupe.pipeline.models.catalog import LayerCatalog, LayerInfo, UnitRef, discover_layers
from loupe.pipeline.models.device import pick_device
from loupe.pipeline.models.preprocessing import Preprocessing
from loupe.pipeline.models.weights import load_into, read_state_dict, weights_digest


class AssumedPreprocessingWarning(UserWarning):
    """A weights file came without declared preprocessing, so the builder's default is assumed."""


class LoadedModel:
    """An eval-mode nn.Module plus what Loupe needs to address it: preprocessing, catalog, digest.

    Call it with RGB images in [0, 1]; normalization happens inside. `notes` are warnings a
    build summary repeats (e.g. the preprocessing assumed for a weights file).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        preprocessing: Preprocessing,
        device: torch.device,
        name: str,
        weights: str = "none",
        categories: list[str] | None = None,
        notes: tuple[str, ...] = (),
    ) -> None:
        self.module = module.eval().to(device)
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.preprocessing = preprocessing
        self.device = device
        self.name = name
        self.weights = weights
        self.categories = categories
        self.notes = notes

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        *,
        preprocessing: Preprocessing | None = None,
        device: str | torch.device | None = None,
        name: str = "model",
        categories: list[str] | None = None,
    ) -> "LoadedModel":
        """Wrap any nn.Module (e.g. one built in a notebook or a test) as a LoadedModel."""
        return cls(
            module,
            preprocessing=preprocessing or Preprocessing(),
            device=pick_device(device),
            name=name,
            weights="in-memory",
            categories=categories,
        )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return self.preprocessing.normalize(images)

    def __call__(self, images: torch.Tensor) -> Any:
        return self.module(self.normalize(images))

    @cached_property
    def catalog(self) -> LayerCatalog:
        """Every addressable layer, found by one dry run at the model's input size."""
        size = self.preprocessing.input_size
        generator = torch.Generator().manual_seed(0)
        example = torch.rand(1, 3, size, size, generator=generator).to(self.device)
        return discover_layers(self.module, self.normalize(example), model_name=self.name)

    @cached_property
    def weights_digest(self) -> str:
        return weights_digest(self.module)

    def layer(self, name: str) -> LayerInfo:
        return self.catalog[name]

    def unit(self, address: str | UnitRef) -> UnitRef:
        return self.catalog.unit(address)

    def describe(self) -> str:
        p = self.preprocessing
        return (
            f"{self.name} (weights: {self.weights}; device: {self.device}; input {p.input_size}px, "
            f"mean {tuple(round(v, 3) for v in p.mean)}, std {tuple(round(v, 3) for v in p.std)})"
        )


def load_model(
    source: str,
    weights: str,
    *,
    preprocessing: Preprocessing | None = None,
    device: str | torch.device | None = None,
    storage_options: Mapping[str, Any] | None = None,
    state_dict_key: str | None = None,
    strip_prefix: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Build `source` with `weights` ('none', a torchvision weight name, 'bundled:<name>', or a path/URL).

    Random init ('none') is seeded, so the same source and seed always give the same weights and
    digest. Explicit `preprocessing` overrides what the weights or the builder declare; a weights
    file for a torchvision builder without it warns loudly, naming the preprocessing assumed.
    """
    parsed = sources.parse_source(source)
    kind = sources.check_weights_kind(parsed, weights)
    built = _build(parsed, kind, weights, dict(model_kwargs or {}), seed)
    notes: tuple[str, ...] = ()
    if kind == "bundled":
        entry = bundled_weights(weights, parsed.text)
        load_into(built.module, read_state_dict(str(entry.path)), origin=f"{weights} ({entry.path.name})")
        built = _Built(built.module, entry.preprocessing, entry.categories(), weights.strip())
    if kind == "file":
        state = read_state_dict(
            weights, storage_options=storage_options, state_dict_key=state_dict_key, strip_prefix=strip_prefix
        )
        load_into(built.module, state, origin=f"from {weights}")
        categories = built.categories
        if parsed.is_torchvision and categories is None:
            categories = _builder_categories(parsed.target, built.module)
        built = _Built(built.module, built.preprocessing, categories, weights)
        if parsed.is_torchvision and preprocessing is None:
            notes = (assumed_preprocessing_note(parsed.text, weights, built.preprocessing),)
            warnings.warn(notes[0], AssumedPreprocessingWarning, stacklevel=2)
    return LoadedModel(
        built.module,
        preprocessing=preprocessing or built.preprocessing,
        device=pick_device(device),
        name=parsed.text,
        weights=built.weights_label,
        categories=built.categories,
        notes=notes,
    )


def assumed_preprocessing_note(source: str, weights: str, assumed: Preprocessing) -> str:
    """The loud message for a weights file whose preprocessing nobody declared."""
    return (
        f"WEIGHTS FILE WITHOUT PREPROCESSING: {weights} for {source} has no `preprocessing:` block, so the "
        f"builder's default is ASSUMED: mean {list(assumed.mean)}, std {list(assumed.std)}, input "
        f"{assumed.input_size}px (resize {assumed.resize_size}). If the weights were trained otherwise "
        "(e.g. TensorFlow's x/127.5-1 is range: [-1, 1]), declare it or every picture is subtly wrong."
    )


@dataclass(frozen=True)
class _Built:
    """A freshly built module and what its source declares about it."""

    module: nn.Module
    preprocessing: Preprocessing
    categories: list[str] | None
    weights_label: str


def _build(parsed: sources.ModelSource, kind: str, weights: str, kwargs: dict, seed: int) -> _Built:
    """Build the architecture: torchvision's own weights when named, else a seeded random init."""
    if not parsed.is_torchvision:
        module = _build_random(sources.python_callable(parsed.target), kwargs, seed, parsed.text)
        return _Built(module, _declared_preprocessing(module), getattr(module, "loupe_categories", None),
                      "none (random init)")
    builder = sources.torchvision_builder(parsed.target)
    if kind == "torchvision":
        enum_member = sources.resolve_torchvision_weights(parsed.target, weights)
        module = _build_with_torchvision_weights(builder, enum_member, kwargs, parsed.text)
        return _Built(module, sources.preprocessing_from_weights(enum_member),
                      list(enum_member.meta.get("categories") or []) or None,
                      f"{type(enum_member).__name__}.{enum_member.name}")
    module = _build_random(builder, {**sources.random_init_kwargs(parsed.target), **kwargs}, seed, parsed.text)
    return _Built(module, sources.default_preprocessing(parsed.target), None, "none (random init)")


def _build_random(builder, kwargs: dict, seed: int, source: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            if getattr(builder, "__module__", "").startswith("torchvision."):
                module = builder(weights=None, **kwargs)
            else:
                module = builder(**kwargs)
        except TypeError as exc:
            raise ModelSourceError(f"model source '{source}' could not be built with {kwargs}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise ModelSourceError(f"model source '{source}' returned a {type(module).__name__}, not a torch.nn.Module")
    return module


def _build_with_torchvision_weights(builder, enum_member, kwargs: dict, source: str) -> nn.Module:
    """Let torchvision build and load its own weights (downloaded to the torch hub cache on first use)."""
    try:
        return builder(weights=enum_member, **kwargs)
    except (OSError, RuntimeError) as exc:
        raise WeightsError(
            f"torchvision weights {type(enum_member).__name__}.{enum_member.name} for {source} could not be "
            f"loaded from {enum_member.url} (nor found in the torch hub cache): {exc}"
        ) from None


def _builder_categories(builder: str, module: nn.Module) -> list[str] | None:
    """Class names of the builder's DEFAULT weights, for a state dict with the same number of outputs."""
    enum = sources.torchvision_weight_enum(builder)
    names = list(enum.DEFAULT.meta.get("categories") or []) if enum is not None else []
    outputs = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if names and outputs and outputs[-1].out_features == len(names):
        return names
    return None


def _declared_preprocessing(module: nn.Module) -> Preprocessing:
    """A user model may declare `loupe_preprocessing` (a Preprocessing or a dict of its fields)."""
    declared = getattr(module, "loupe_preprocessing", None)
    if isinstance(declared, Preprocessing):
        return declared
    if isinstance(declared, Mapping):
        return Preprocessing(**declared)
    return Preprocessing()
