"""A mergeable quantile sketch of per-image maxima: logarithmic buckets with 1% relative accuracy.

Bucket i > 0 holds values in (g**(i-1), g**i] with g = (1 + a) / (1 - a) (DDSketch), mirrored for
negatives, plus one bucket for |v| <= MIN_MAGNITUDE. Counts are integers, so merging is exact,
associative and commutative; a quantile read from the sketch is within `a` relative error of
the true one (values beyond MAX_MAGNITUDE are counted at the edge). Buckets are ordered by
value: index 0 is the most negative, CENTER is zero.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from loupe.pipeline.scan.state import State, StateError, check_shape, scalar, take

RELATIVE_ACCURACY = 0.01
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
LOG_GAMMA = math.log(GAMMA)
MIN_MAGNITUDE = 1e-6
MAX_MAGNITUDE = 1e6
_LOWEST = math.ceil(math.log(MIN_MAGNITUDE) / LOG_GAMMA) + 1  # first index above MIN_MAGNITUDE
_HIGHEST = math.ceil(math.log(MAX_MAGNITUDE) / LOG_GAMMA)
SIDE = _HIGHEST - _LOWEST + 1
CENTER = SIDE
BUCKETS = 2 * SIDE + 1


def bucket_of(values: torch.Tensor) -> torch.Tensor:
    """Bucket index (int64) of each finite float value."""
    magnitude = values.abs().float()
    index = torch.ceil(torch.log(magnitude.clamp_min(MIN_MAGNITUDE)) / LOG_GAMMA)
    offset = (index.clamp(_LOWEST, _HIGHEST) - (_LOWEST - 1)).to(torch.int64)
    offset = torch.where(magnitude <= MIN_MAGNITUDE, torch.zeros_like(offset), offset)
    return CENTER + torch.where(values < 0, -offset, offset)


def add_(counts: torch.Tensor, values: torch.Tensor, weights: torch.Tensor) -> None:
    """counts (C, BUCKETS) += histogram of values (B, C), each counted with weight 0 or 1."""
    counts.scatter_add_(1, bucket_of(values).transpose(0, 1), weights.transpose(0, 1).to(counts.dtype))


def representative(buckets: np.ndarray) -> np.ndarray:
    """A value inside each bucket within the relative accuracy of every value it holds."""
    offset = np.asarray(buckets, dtype=np.int64) - CENTER
    index = np.abs(offset) + (_LOWEST - 1)
    value = 2.0 * np.power(GAMMA, index.astype(np.float64)) / (GAMMA + 1.0)
    return np.where(offset == 0, 0.0, np.sign(offset) * value)


def bucket_bounds(buckets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper value bounds of each bucket (edge buckets open towards infinity)."""
    offset = np.asarray(buckets, dtype=np.int64) - CENTER
    index = (np.abs(offset) + (_LOWEST - 1)).astype(np.float64)
    upper_mag = np.power(GAMMA, index)
    lower_mag = np.power(GAMMA, index - 1)
    lower_mag = np.where(np.abs(offset) == 1, MIN_MAGNITUDE, lower_mag)
    upper_mag = np.where(np.abs(offset) == SIDE, np.inf, upper_mag)
    lower = np.where(offset > 0, lower_mag, np.where(offset < 0, -upper_mag, -MIN_MAGNITUDE))
    upper = np.where(offset > 0, upper_mag, np.where(offset < 0, -lower_mag, MIN_MAGNITUDE))
    return lower, upper


def quantiles(
    unit: np.ndarray, bucket: np.ndarray, count: np.ndarray, units: int, qs: np.ndarray,
    low: np.ndarray, high: np.ndarray,
) -> np.ndarray:
    """(units, len(qs)) quantiles from sparse sketch rows sorted by (unit, bucket).

    `low`/`high` are each unit's exact minimum and maximum; estimates are clamped into them.
    Units with no values get NaN.
    """
    out = np.full((units, len(qs)), np.nan)
    if len(unit) == 0:
        return out
    starts = np.searchsorted(unit, np.arange(units), side="left")
    stops = np.searchsorted(unit, np.arange(units), side="right")
    values = representative(bucket)
    for u in np.flatnonzero(stops > starts):
        c = np.cumsum(count[starts[u]:stops[u]])
        ranks = np.asarray(qs) * (c[-1] - 1)
        pick = np.searchsorted(c, ranks, side="right")
        out[u] = np.clip(values[starts[u]:stops[u]][pick], low[u], high[u])
    return out


class QuantileSketch:
    """Per-unit sketch of values: dense counts on the model's device while adding, else sparse
    (unit, bucket, count) rows sorted by unit and bucket, which merge by adding counts."""

    def __init__(self, units: int, unit: np.ndarray, bucket: np.ndarray, count: np.ndarray) -> None:
        self.units = int(units)
        self._unit = np.asarray(unit, dtype=np.int64)
        self._bucket = np.asarray(bucket, dtype=np.int64)
        self._count = np.asarray(count, dtype=np.int64)
        self._dense: torch.Tensor | None = None

    @classmethod
    def empty(cls, units: int) -> "QuantileSketch":
        return cls(units, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))

    def add(self, values: torch.Tensor, weights: torch.Tensor) -> None:
        """Count values (B, units), each with weight 0 or 1 (e.g. whether it is finite)."""
        if self._dense is None:
            self._dense = torch.zeros((self.units, BUCKETS), dtype=torch.int32, device=values.device)
        add_(self._dense, values, weights)

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(unit, bucket, count) of every non-empty bucket, sorted by unit then bucket."""
        if self._dense is not None:
            counts = self._dense.cpu().numpy()
            unit, bucket = np.nonzero(counts)
            self._dense = None
            dense = (unit.astype(np.int64), bucket.astype(np.int64), counts[unit, bucket].astype(np.int64))
            self._unit, self._bucket, self._count = _union((self._unit, self._bucket, self._count), dense)
        return self._unit, self._bucket, self._count

    def merge(self, other: "QuantileSketch") -> "QuantileSketch":
        if other.units != self.units:
            raise StateError(f"cannot merge quantile sketches of {self.units} and {other.units} units")
        return QuantileSketch(self.units, *_union(self.rows(), other.rows()))

    def result(self, qs: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """(units, len(qs)) quantiles, clamped into each unit's exact [low, high]."""
        return quantiles(*self.rows(), self.units, np.asarray(qs, dtype=np.float64), low, high)

    def select(self, start: int, stop: int) -> "QuantileSketch":
        """The sketch of units [start, stop), renumbered from 0."""
        unit, bucket, count = self.rows()
        inside = (unit >= start) & (unit < stop)
        return QuantileSketch(stop - start, unit[inside] - start, bucket[inside], count[inside])

    def state(self) -> State:
        unit, bucket, count = self.rows()
        return {"units": np.int64(self.units), "unit": unit.copy(), "bucket": bucket.copy(), "count": count.copy()}

    @classmethod
    def from_state(cls, state: State) -> "QuantileSketch":
        units = scalar(state, "units", "int")
        unit = take(state, "unit", "int", ndim=1)
        bucket = check_shape("bucket", take(state, "bucket", "int", ndim=1), unit.shape)
        count = check_shape("count", take(state, "count", "int", ndim=1), unit.shape)
        if len(unit) and (unit.min() < 0 or unit.max() >= units or bucket.min() < 0 or bucket.max() >= BUCKETS):
            raise StateError(f"quantile sketch state names units or buckets outside {units} units x {BUCKETS} buckets")
        return cls(units, unit, bucket, count)


Rows = tuple[np.ndarray, np.ndarray, np.ndarray]


def _union(a: Rows, b: Rows) -> Rows:
    """Rows of both sketches with the counts of shared buckets added (exact, order-independent)."""
    (ua, ba, ca), (ub, bb, cb) = a, b
    combined = np.concatenate([ua * BUCKETS + ba, ub * BUCKETS + bb])
    flat, inverse = np.unique(combined, return_inverse=True)
    counts = np.zeros(len(flat), dtype=np.int64)
    np.add.at(counts, inverse, np.concatenate([ca, cb]))
    return flat // BUCKETS, flat % BUCKETS, counts
