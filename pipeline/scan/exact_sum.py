"""Exact, order-independent sums of float32 values, so merged statistics equal a single pass bit for bit.

Floating-point addition is not associative: summing shard totals in another order changes the
last bits. Instead every float32 value is split into its integer mantissa and exponent and added
to an integer "limb" chosen by the exponent (a fixed-point superaccumulator). Integer addition is
exact, so any grouping or order of images and shards gives the same integers, and the same
float64 result at the end. The update is a few elementwise ops and one scatter_add per batch on
the model's device.

Value of a normalized accumulator: sum over limbs of limb[i] * 2**(LIMB_BITS * i - BIAS).
"""

from __future__ import annotations

import math

import numpy as np
import torch

LIMB_BITS = 16
LIMBS = 18  # float32 spans exponents -149..127: 277 bits / 16 bits per limb
BIAS = 172  # 2**-149 (smallest subnormal) has mantissa 2**23 at exponent -172
_MANTISSA_SCALE = float(2**24)
_FLUSH_EVERY = 2**22  # values per limb before carries must move up (each adds < 2**39)


def add_(accumulator: torch.Tensor, values: torch.Tensor) -> None:
    """accumulator (S, C, LIMBS) int64 += exact sum over B of values (S, B, C) float32 (finite)."""
    mantissa, exponent = torch.frexp(values.float())
    integer = (mantissa * _MANTISSA_SCALE).to(torch.int64)
    shifted = exponent.to(torch.int64) + (BIAS - 24)
    limb = shifted // LIMB_BITS
    contribution = integer << (shifted - limb * LIMB_BITS)
    accumulator.scatter_add_(2, limb.transpose(1, 2), contribution.transpose(1, 2))


def normalize(limbs: np.ndarray) -> np.ndarray:
    """Canonical form: every limb but the last in [0, 2**LIMB_BITS); same value, exact."""
    limbs = np.array(limbs, dtype=np.int64, copy=True)
    for i in range(limbs.shape[-1] - 1):
        carry = limbs[..., i] >> LIMB_BITS
        limbs[..., i] -= carry << LIMB_BITS
        limbs[..., i + 1] += carry
    return limbs


def to_float(limbs: np.ndarray) -> np.ndarray:
    """float64 of each accumulator (leading dims kept), correctly rounded from the exact integer."""
    flat = normalize(limbs).reshape(-1, limbs.shape[-1])
    out = np.empty(flat.shape[0], dtype=np.float64)
    for row, values in enumerate(flat.tolist()):
        total = 0
        for i in range(len(values) - 1, -1, -1):
            total = (total << LIMB_BITS) + values[i]
        out[row] = _ldexp_int(total, -BIAS)
    return out.reshape(limbs.shape[:-1])


def _ldexp_int(value: int, exponent: int) -> float:
    if value == 0:
        return 0.0
    try:
        return value / (1 << -exponent) if exponent < 0 else float(value << exponent)
    except OverflowError:
        return math.copysign(math.inf, value)


def flush_interval() -> int:
    """How many values a device accumulator may take before it must be normalized on the host."""
    return _FLUSH_EVERY
