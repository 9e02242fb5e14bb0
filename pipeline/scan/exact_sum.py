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

from loupe.pipeline.scan.state import State, StateError, take

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


class ExactSum:
    """Exact sums per (row, unit) as integer limbs: `add` on the model's device, merge on the host.

    Device limbs are moved to the host (normalized) before they could overflow; the host limbs are
    the canonical state, so any grouping of adds and merges gives the same integers.
    """

    def __init__(self, limbs: np.ndarray) -> None:
        self._limbs = normalize(limbs)
        self._device: torch.Tensor | None = None
        self._pending = 0

    @classmethod
    def zeros(cls, rows: int, units: int) -> "ExactSum":
        return cls(np.zeros((rows, units, LIMBS), dtype=np.int64))

    @property
    def limbs(self) -> np.ndarray:
        """(rows, units, LIMBS) int64, normalized, including everything added so far."""
        self._flush()
        return self._limbs

    def add(self, values: torch.Tensor) -> None:
        """Add values (rows, B, units) float32, all finite, on any device."""
        if self._device is None:
            self._device = torch.zeros(self._limbs.shape, dtype=torch.int64, device=values.device)
        add_(self._device, values)
        self._pending += values.shape[1]
        if self._pending >= _FLUSH_EVERY:
            self._flush()

    def merge(self, other: "ExactSum") -> "ExactSum":
        return ExactSum(self.limbs + other.limbs)

    def result(self) -> np.ndarray:
        """(rows, units) float64 sums, correctly rounded."""
        return to_float(self.limbs)

    def select(self, rows: slice | list[int] = slice(None), units: slice = slice(None)) -> "ExactSum":
        return ExactSum(self.limbs[rows, units])

    def state(self) -> State:
        return {"limbs": self.limbs.copy()}

    @classmethod
    def from_state(cls, state: State) -> "ExactSum":
        limbs = take(state, "limbs", "int", ndim=3)
        if limbs.shape[-1] != LIMBS:
            raise StateError(f"statistic state array 'limbs' must have {LIMBS} limbs, got shape {limbs.shape}")
        return cls(limbs)

    def _flush(self) -> None:
        if self._device is not None and self._pending:
            self._limbs = normalize(self._limbs + self._device.cpu().numpy())
            self._device = None  # a fresh one on the next add (this one may be an inference tensor)
        self._pending = 0
