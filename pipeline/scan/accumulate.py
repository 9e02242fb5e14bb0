"""Streaming per-unit state on the model's device: top-k, bottom-k, exact sums, quantile sketch.

All units of all scanned layers share one unit axis, so each batch costs the same few vectorized
ops however many layers and channels are scanned: per layer only the reductions of its
activation run (spatial max, mean, mean of squares: one cheap pass each), then one top-k over
(running k + batch) candidates updates every unit at once. Nothing leaves the device until the
scan ends (or a chunk of pooled activations is due).

Where the maximum sits is needed only for images that enter a unit's top-k or bottom-k. On CPUs,
where max-with-index is several times slower than a plain max, it is computed only for those
candidates (sort key above the unit's current k-th key, usually a few percent of the batch); on
GPUs one fused max-with-index pass is cheaper than the data-dependent gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from loupe.pipeline.scan.exact_sum import ExactSum
from loupe.pipeline.scan.keys import PAD, bottom_keys, top_keys
from loupe.pipeline.scan.sketch import QuantileSketch
from loupe.pipeline.scan.state import State, StateError, check_shape, take

STATISTICS = ("max", "max_squared", "mean", "mean_squared")
# The square of a float32 max is exact in float64; it is accumulated as two float32 parts
# (rounded square + remainder), both exact, so max_squared is the exact sum of exact squares.
_ROWS = ("max", "max_squared", "max_squared_remainder", "mean", "mean_squared")


@dataclass
class Reduced:
    """Per-image, per-unit reductions of one batch: each (B, U) over the concatenated unit axis."""

    maxima: torch.Tensor  # float32, spatial max
    argmax: torch.Tensor  # int64, flattened position of the (first) max; -1 where not needed
    means: torch.Tensor  # float32, spatial mean
    mean_squares: torch.Tensor  # float32, spatial mean of squares

    def head(self, count: int) -> "Reduced":
        """The first `count` images (drops padding)."""
        if count == self.maxima.shape[0]:
            return self
        return Reduced(*(getattr(self, f)[:count] for f in Reduced.__dataclass_fields__))


@dataclass
class Floors:
    """What a new image must beat to enter a layer's top-k / bottom-k: each unit's k-th key, and image ranks."""

    top: torch.Tensor  # int64 (C,)
    bottom: torch.Tensor  # int64 (C,)
    ranks: torch.Tensor  # int64 (B,)


def reduce_activation(values: torch.Tensor, floors: Floors | None = None) -> Reduced:
    """Reductions of one layer's (B, C, P) activation over its positions.

    Without `floors`, the position of every max is found (one fused pass, best on GPUs); with
    them, only for images whose max can still enter the unit's top-k or bottom-k.
    """
    if values.dtype != torch.float32:
        values = values.float()
    means = values.mean(dim=2)
    mean_squares = torch.linalg.vector_norm(values, dim=2).square_().div_(values.shape[2])
    if floors is None:
        maxima, argmax = values.max(dim=2)
        return Reduced(maxima, argmax, means, mean_squares)
    maxima = values.amax(dim=2)
    batch = maxima.shape[0]
    ranks = floors.ranks.view(-1, 1)
    candidate = (top_keys(maxima, ranks) > floors.top) | (bottom_keys(maxima, ranks) > floors.bottom)
    image, unit = candidate.nonzero(as_tuple=True)
    argmax = torch.full((batch, values.shape[1]), -1, dtype=torch.int64, device=values.device)
    if len(image):
        argmax[image, unit] = values[image, unit].argmax(dim=1)
    return Reduced(maxima, argmax, means, mean_squares)


def concat(parts: list[Reduced]) -> Reduced:
    if len(parts) == 1:
        return parts[0]
    return Reduced(*(torch.cat([getattr(p, f) for p in parts], dim=1) for f in Reduced.__dataclass_fields__))


class TopK:
    """The k largest sort keys per unit (keys.py), best first, with the image position and the
    flattened spatial position that produced each. Keys of filled slots are unique (value and
    image id), so any order of adds and merges keeps the same entries; empty slots read
    (PAD, -1, -1) in `state()`.
    """

    def __init__(self, keys: torch.Tensor, image: torch.Tensor, where: torch.Tensor) -> None:
        self.keys, self.image, self.where = keys, image, where

    @classmethod
    def empty(cls, units: int, k: int, device: torch.device | str = "cpu") -> "TopK":
        def full(value: int) -> torch.Tensor:
            return torch.full((units, k), value, dtype=torch.int64, device=device)

        return cls(full(int(PAD)), full(-1), full(-1))

    @property
    def k(self) -> int:
        return self.keys.shape[1]

    def add(self, keys: torch.Tensor, image: torch.Tensor, where: torch.Tensor) -> None:
        """keys/where (U, B), image (B,) or (U, B): keep the k largest keys of old + new per unit."""
        best, index = torch.cat([self.keys, keys], dim=1).topk(self.k, dim=1)
        units, batch = keys.shape
        self.image = torch.cat([self.image, image.expand(units, batch)], dim=1).gather(1, index)
        self.where = torch.cat([self.where, where], dim=1).gather(1, index)
        self.keys = best

    def merge(self, other: "TopK") -> "TopK":
        if (other.keys.shape[0], other.k) != (self.keys.shape[0], self.k):
            raise StateError(f"cannot merge top-k of shape {tuple(self.keys.shape)} with {tuple(other.keys.shape)}")
        merged = TopK(self.keys.clone(), self.image.clone(), self.where.clone())
        device = self.keys.device
        merged.add(other.keys.to(device), other.image.to(device), other.where.to(device))
        return merged

    def floor(self, start: int, stop: int) -> torch.Tensor:
        """The k-th best key of units [start, stop): what a new entry must beat."""
        return self.keys[start:stop, -1]

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Host (keys, image, where), each (U, k); empty slots have image and where -1."""
        keys = self.keys.cpu().numpy()
        empty = keys == PAD
        image = np.where(empty, -1, self.image.cpu().numpy())
        where = np.where(empty, -1, self.where.cpu().numpy())
        return keys, image, where

    def state(self) -> State:
        keys, image, where = self.result()
        return {"keys": keys, "image": image, "where": where}

    @classmethod
    def from_state(cls, state: State) -> "TopK":
        keys = take(state, "keys", "int", ndim=2)
        image = check_shape("image", take(state, "image", "int", ndim=2), keys.shape)
        where = check_shape("where", take(state, "where", "int", ndim=2), keys.shape)
        return cls(*(torch.from_numpy(np.array(a, dtype=np.int64)) for a in (keys, image, where)))


@dataclass(frozen=True, eq=False)
class UnitTotals:
    """Host copies of everything a scan kept per unit, over the concatenated unit axis."""

    top: TopK
    bottom: TopK
    sums: ExactSum  # rows in STATISTICS order
    images: np.ndarray  # int64 (U,): images with finite reductions
    nonfinite: np.ndarray  # int64 (U,)
    max_positive: np.ndarray  # int64 (U,)
    sketch: QuantileSketch


class UnitAccumulator:
    """Everything a scan keeps per unit, for `units` units on `device`."""

    def __init__(self, units: int, k: int, device: torch.device) -> None:
        self.units = units
        self.device = device
        self.top = TopK.empty(units, k, device)
        self.bottom = TopK.empty(units, k, device)
        self.sums = ExactSum.zeros(len(_ROWS), units)
        self.images = torch.zeros(units, dtype=torch.int64, device=device)
        self.nonfinite = torch.zeros(units, dtype=torch.int64, device=device)
        self.max_positive = torch.zeros(units, dtype=torch.int64, device=device)
        self.sketch = QuantileSketch.empty(units)

    def add(self, reduced: Reduced, image_positions: torch.Tensor, image_ranks: torch.Tensor) -> None:
        """Fold one batch in: reduced (B, U) tensors, positions/ranks (B,) int64 on the device."""
        maxima = reduced.maxima.transpose(0, 1)  # (U, B)
        ranks = image_ranks.view(1, -1)
        nan = maxima.isnan()
        pad = torch.full_like(maxima, int(PAD), dtype=torch.int64)
        where = reduced.argmax.transpose(0, 1)
        self.top.add(torch.where(nan, pad, top_keys(maxima, ranks)), image_positions, where)
        self.bottom.add(torch.where(nan, pad, bottom_keys(maxima, ranks)), image_positions, where)

        square = reduced.maxima.double().square()
        rounded = square.float()
        values = torch.stack(
            [reduced.maxima, rounded, (square - rounded.double()).float(), reduced.means, reduced.mean_squares]
        )  # (rows, B, U)
        finite = values.isfinite().all(dim=0)  # (B, U)
        self.sums.add(torch.where(finite, values, torch.zeros_like(values)))
        finite_count = finite.sum(dim=0)
        self.images += finite_count
        self.nonfinite += finite.shape[0] - finite_count
        self.max_positive += (finite & (reduced.maxima > 0)).sum(dim=0)
        self.sketch.add(torch.where(finite, reduced.maxima, torch.zeros_like(reduced.maxima)), finite)

    def floors(self, lo: int, hi: int, ranks: torch.Tensor) -> Floors:
        """Entry thresholds for units [lo, hi) (the current k-th best keys)."""
        return Floors(self.top.floor(lo, hi), self.bottom.floor(lo, hi), ranks)

    def _statistic_sums(self) -> ExactSum:
        """Sums in STATISTICS order: the two parts of the squares joined, exactly."""
        limbs = self.sums.limbs
        rows = {name: limbs[i] for i, name in enumerate(_ROWS)}
        rows["max_squared"] = rows["max_squared"] + rows.pop("max_squared_remainder")
        return ExactSum(np.stack([rows[name] for name in STATISTICS]))

    def finish(self) -> UnitTotals:
        """Host copies of every accumulator (the device state can be dropped afterwards)."""
        def host(top: TopK) -> TopK:
            return TopK.from_state(top.state())

        return UnitTotals(
            top=host(self.top), bottom=host(self.bottom), sums=self._statistic_sums(),
            images=self.images.cpu().numpy(), nonfinite=self.nonfinite.cpu().numpy(),
            max_positive=self.max_positive.cpu().numpy(), sketch=self.sketch,
        )
