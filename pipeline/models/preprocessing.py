"""How a model wants its input: normalization and size, declared once per model.

Every Loupe caller hands models RGB images in [0, 1]; the model wrapper applies this
normalization itself, so render and scan code never needs to know a model's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Per-channel mean/std applied to [0, 1] RGB input, and the model's native input size.

    `resize_size` is the shorter-side resize before the centre crop of `input_size` used when
    scanning datasets (torchvision's eval recipe).
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224
    resize_size: int = field(default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _triple(self.mean, "mean"))
        object.__setattr__(self, "std", _triple(self.std, "std"))
        if any(s <= 0 for s in self.std):
            raise ValueError(f"preprocessing.std must be positive, got {self.std}")
        if int(self.input_size) < 1:
            raise ValueError(f"preprocessing.input_size must be >= 1, got {self.input_size}")
        object.__setattr__(self, "input_size", int(self.input_size))
        if not self.resize_size:
            object.__setattr__(self, "resize_size", round(self.input_size / 0.875))
        elif int(self.resize_size) < self.input_size:
            raise ValueError(
                f"preprocessing.resize_size ({self.resize_size}) must be >= input_size ({self.input_size})"
            )

    @classmethod
    def from_range(cls, low: float, high: float, input_size: int = 224, resize_size: int = 0) -> "Preprocessing":
        """Map [0, 1] linearly onto [low, high], e.g. (-1, 1) for TensorFlow-style `x/127.5 - 1`."""
        if high <= low:
            raise ValueError(f"preprocessing.range must be increasing, got [{low}, {high}]")
        scale = high - low
        mean = (-low / scale,) * 3
        std = (1.0 / scale,) * 3
        return cls(mean=mean, std=std, input_size=input_size, resize_size=resize_size)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Turn a (N, 3, H, W) batch of [0, 1] RGB into the model's input; differentiable."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def to_dict(self) -> dict:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": self.input_size,
            "resize_size": self.resize_size,
        }


def _triple(values: Sequence[float], name: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ValueError(f"preprocessing.{name} needs 1 or 3 values (RGB), got {len(values)}")
    return values  # type: ignore[return-value]
