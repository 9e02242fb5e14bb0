"""Weights shipped inside the package, so the quickstart shows real features with no internet.

A config names them `weights: bundled:<name>`; each entry declares the builder it fits, its
preprocessing and its class names, because a bare state dict carries none of these and guessing
the normalization silently would make every picture subtly wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loupe.pipeline.errors import WeightsError, close_matches
from loupe.pipeline.models.preprocessing import Preprocessing

BUNDLED_PREFIX = "bundled:"
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


@dataclass(frozen=True)
class BundledWeights:
    """One shipped weights file and what it needs: builder, preprocessing, class names."""

    name: str
    filename: str
    builder: str
    preprocessing: Preprocessing
    categories_from: str  # torchvision weight enum member whose (offline) meta holds the class names

    @property
    def path(self) -> Path:
        return PRETRAINED_DIR / self.filename

    @property
    def source(self) -> str:
        return f"torchvision:{self.builder}"

    def categories(self) -> list[str] | None:
        from torchvision import models as tv_models

        enum_name, _, member = self.categories_from.partition(".")
        meta = getattr(getattr(tv_models, enum_name), member).meta
        return list(meta.get("categories") or []) or None


BUNDLED: dict[str, BundledWeights] = {
    "mobilenet_v2_imagenet": BundledWeights(
        name="mobilenet_v2_imagenet",
        filename="mobilenet_v2_imagenet_fp16.pt",
        builder="mobilenet_v2",
        # TensorFlow-style x/127.5 - 1: mean 0.5, std 0.5 on [0, 1]; resize 256, centre crop 224.
        preprocessing=Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=224, resize_size=256),
        categories_from="MobileNet_V2_Weights.IMAGENET1K_V1",
    ),
}


def is_bundled(weights: str) -> bool:
    return str(weights).strip().startswith(BUNDLED_PREFIX)


def bundled_weights(weights: str, source: str | None = None) -> BundledWeights:
    """Look up `bundled:<name>`; a clear error lists the names, or the source it needs."""
    name = str(weights).strip()[len(BUNDLED_PREFIX):]
    entry = BUNDLED.get(name)
    if entry is None:
        available = [BUNDLED_PREFIX + n for n in BUNDLED]
        raise WeightsError(
            f"unknown bundled weights '{weights}': available are {available}"
            f"{close_matches(name, list(BUNDLED))}"
        )
    if source is not None and source.strip() != entry.source:
        raise WeightsError(
            f"bundled weights '{weights}' are for source '{entry.source}', not '{source}'"
        )
    if not entry.path.is_file():
        raise WeightsError(f"bundled weights '{weights}' are missing from the installed package ({entry.path})")
    return entry
