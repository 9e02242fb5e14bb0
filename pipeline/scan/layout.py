"""Bring any layer's activation into (batch, channels, positions) and back to (y, x).

The catalog records each layer's layout: "NCHW" feature maps, "NLC" token sequences (channels
last), "NC" vectors, "NCL"/"NCTHW" and others with channels at dim 1. The scan works on a
flattened position axis; y and x are recovered for 2-D maps, and for other layouts y is the
flat position and x is 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def as_channels_first(activation: torch.Tensor, layout: str) -> torch.Tensor:
    """A (N, C, ...) view of `activation` whatever its layout (no copy)."""
    if layout == "NLC":
        return activation.transpose(1, 2)
    if activation.dim() == 2:
        return activation.unsqueeze(-1)
    return activation


def positions_count(spatial: tuple[int, ...]) -> int:
    return int(math.prod(spatial)) if spatial else 1


def to_yx(positions: np.ndarray, spatial: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) of flattened positions in a map of shape `spatial`."""
    positions = np.asarray(positions, dtype=np.int64)
    if len(spatial) == 2:
        return positions // spatial[1], positions % spatial[1]
    return positions, np.zeros_like(positions)
