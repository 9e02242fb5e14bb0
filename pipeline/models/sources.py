"""Resolve a model source string into something that builds an nn.Module.

Two forms, both familiar: `torchvision:<builder>` for any builder registered in
`torchvision.models` (weights through torchvision's own enums), and `package.module:callable`
for a user's own model.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn
from torchvision import models as tv_models

from loupe.pipeline.errors import ModelSourceError, WeightsError, close_matches
from loupe.pipeline.models.bundled import bundled_weights, is_bundled
from loupe.pipeline.models.preprocessing import Preprocessing

TORCHVISION_PREFIX = "torchvision:"

# Builders whose random-init default prints a warning and whose aux heads are not wanted.
_QUIET_RANDOM_INIT = {"googlenet": {"init_weights": True}, "inception_v3": {"init_weights": True}}


@dataclass(frozen=True)
class ModelSource:
    """A parsed source string: where the builder comes from and what it is called."""

    text: str
    kind: str  # "torchvision" or "python"
    target: str  # builder name, or "package.module:callable"

    @property
    def is_torchvision(self) -> bool:
        return self.kind == "torchvision"


def parse_source(text: str) -> ModelSource:
    """Validate the shape of a source string without importing anything heavy."""
    text = (text or "").strip()
    if text.startswith(TORCHVISION_PREFIX):
        name = text[len(TORCHVISION_PREFIX):]
        if not name:
            raise ModelSourceError("model source 'torchvision:' names no builder (e.g. torchvision:resnet50)")
        return ModelSource(text, "torchvision", name)
    module, sep, attr = text.partition(":")
    if not sep or not module or not attr:
        raise ModelSourceError(
            f"model source '{text}' is not 'torchvision:<builder>' nor 'package.module:callable'"
        )
    return ModelSource(text, "python", text)


def torchvision_builders() -> dict[str, str]:
    """Every registered torchvision builder, mapped to its task (classification, detection, ...)."""
    tasks = {
        "classification": tv_models,
        "segmentation": tv_models.segmentation,
        "detection": tv_models.detection,
        "video": tv_models.video,
        "optical_flow": tv_models.optical_flow,
        "quantization": tv_models.quantization,
    }
    found: dict[str, str] = {}
    for task, module in tasks.items():
        for name in tv_models.list_models(module=module):
            found.setdefault(name, task)
    for name in tv_models.list_models():
        found.setdefault(name, "other")
    return dict(sorted(found.items()))


def torchvision_builder(name: str) -> Callable[..., nn.Module]:
    builders = torchvision_builders()
    if name not in builders:
        raise ModelSourceError(
            f"unknown torchvision builder '{name}'{close_matches(name, builders)}; `loupe models` lists them"
        )
    return tv_models.get_model_builder(name)


def torchvision_weight_enum(name: str) -> Any | None:
    """The builder's weight enum class, or None for builders without pretrained weights."""
    try:
        return tv_models.get_model_weights(name)
    except (ValueError, KeyError):
        return None


def resolve_torchvision_weights(builder: str, weights: str) -> Any | None:
    """Map 'DEFAULT', 'IMAGENET1K_V1' or 'ResNet50_Weights.IMAGENET1K_V1' to a weight enum member.

    Returns None when `weights` is not a weight name of this builder (it may be a path).
    """
    enum = torchvision_weight_enum(builder)
    if enum is None:
        return None
    member = weights.split(".", 1)[1] if weights.startswith(enum.__name__ + ".") else weights
    return enum.__members__.get(member)


def torchvision_weight_names(builder: str) -> list[str]:
    enum = torchvision_weight_enum(builder)
    return list(enum.__members__) if enum is not None else []


def default_preprocessing(builder: str) -> Preprocessing:
    """Preprocessing from the builder's DEFAULT weights' eval transforms (no download needed)."""
    enum = torchvision_weight_enum(builder)
    if enum is None:
        return Preprocessing()
    return preprocessing_from_weights(enum.DEFAULT)


def preprocessing_from_weights(weights: Any) -> Preprocessing:
    transforms = weights.transforms()
    crop = getattr(transforms, "crop_size", [224])
    resize = getattr(transforms, "resize_size", None)
    return Preprocessing(
        mean=tuple(getattr(transforms, "mean", (0.485, 0.456, 0.406))),
        std=tuple(getattr(transforms, "std", (0.229, 0.224, 0.225))),
        input_size=int(crop[0]),
        resize_size=int(resize[0]) if resize else 0,
    )


def random_init_kwargs(builder: str) -> dict[str, Any]:
    return dict(_QUIET_RANDOM_INIT.get(builder, {}))


def python_callable(target: str) -> Callable[..., nn.Module]:
    """Import `package.module:callable` (the callable may be a dotted attribute path)."""
    module_name, _, attr_path = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModelSourceError(
            f"model source '{target}': cannot import module '{module_name}' ({exc}); "
            "is its package installed or on PYTHONPATH?"
        ) from None
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ModelSourceError(
                f"model source '{target}': '{module_name}' has no attribute '{attr_path}'"
                f"{close_matches(part, names)}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelSourceError(f"model source '{target}' is not callable")
    return obj


def check_weights_kind(source: ModelSource, weights: str) -> str:
    """Classify `weights` as 'none', 'torchvision', 'bundled' or 'file', with a clear error otherwise."""
    if weights is None or str(weights).strip() == "":
        raise WeightsError(
            f"no weights given for {source.text}: name them ('DEFAULT', a file or URL) or say 'none' for random init"
        )
    weights = str(weights).strip()
    if weights.lower() == "none":
        return "none"
    if is_bundled(weights):
        bundled_weights(weights, source.text)
        return "bundled"
    if source.is_torchvision and resolve_torchvision_weights(source.target, weights) is not None:
        return "torchvision"
    looks_like_path = "/" in weights or "://" in weights or weights.endswith((".pth", ".pt", ".th", ".bin", ".ckpt"))
    if looks_like_path:
        return "file"
    names = torchvision_weight_names(source.target) if source.is_torchvision else []
    known = f"; {source.target} has weights {names}" if names else ""
    raise WeightsError(
        f"weights '{weights}' for {source.text} is neither a torchvision weight name, 'bundled:<name>', "
        f"nor a path or URL{known}"
        f"{close_matches(weights, names)}"
    )
