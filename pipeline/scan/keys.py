"""Sort keys that make top-k exact and deterministic: value first, then image id.

A float32 activation maps to an int32 whose integer order is the float order (flip the low 31
bits of negatives). Packing that into the high 32 bits of an int64 and `0xFFFFFFFF - rank` of the
image id into the low 32 bits gives one integer per (value, image): the largest key is the
largest value, and among equal values the smallest id. A single `torch.topk` over int64 keys
is therefore an exact, tie-free selection on any device, and merging shards is a pure function
of the keys, so any merge order gives the same result.

Bottom-k uses the bitwise complement of the value part, so it is also a top-k over keys.
NaN never wins: it counts as -inf for top-k and +inf for bottom-k.
"""

from __future__ import annotations

import numpy as np
import torch

PAD = np.iinfo(np.int64).min  # below every real key: marks an empty slot
_LOW = 0xFFFFFFFF
_FLIP = 0x7FFFFFFF


def _ordered_int32(values: torch.Tensor) -> torch.Tensor:
    """float32 -> int32 with the same order; -0.0 and +0.0 map to the same integer."""
    values = torch.where(values == 0, torch.zeros_like(values), values).contiguous()
    bits = values.view(torch.int32)
    return torch.where(bits < 0, bits ^ _FLIP, bits)


def top_keys(values: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Keys for top-k: values (..., B) float, ranks broadcastable int64 -> int64 keys."""
    values = torch.nan_to_num(values.float(), nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    return (_ordered_int32(values).to(torch.int64) << 32) | (_LOW - ranks)


def bottom_keys(values: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Keys for bottom-k (smallest value wins, then smallest id) as a top-k over keys."""
    values = torch.nan_to_num(values.float(), nan=float("inf"), posinf=float("inf"), neginf=float("-inf"))
    return ((~_ordered_int32(values)).to(torch.int64) << 32) | (_LOW - ranks)


def decode_values(keys: np.ndarray, bottom: bool) -> np.ndarray:
    """The float32 activation packed in each key (NaN where the slot is empty)."""
    keys = np.asarray(keys, dtype=np.int64)
    high = (keys >> 32).astype(np.int32)
    if bottom:
        high = ~high
    bits = np.where(high < 0, high ^ np.int32(_FLIP), high).astype(np.int32)
    values = bits.view(np.float32).copy()
    values[keys == PAD] = np.nan
    return values


def decode_ranks(keys: np.ndarray) -> np.ndarray:
    """The id rank packed in each key (-1 where the slot is empty)."""
    keys = np.asarray(keys, dtype=np.int64)
    ranks = _LOW - (keys & _LOW)
    return np.where(keys == PAD, -1, ranks)
