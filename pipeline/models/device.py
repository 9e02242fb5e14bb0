"""Choose where a model runs: CUDA when present, else CPU; never hard-coded."""

from __future__ import annotations

import torch

from loupe.pipeline.errors import LoupeError


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """Resolve 'auto'/None to the best available device and validate an explicit request."""
    if requested is None or str(requested) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LoupeError(f"device '{requested}' was requested but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise LoupeError(
            f"device '{requested}' does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return device
