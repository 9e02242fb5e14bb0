"""Quantile-band samples and histograms of each unit's per-image activation, mergeable.

The statistic is the one the scan ranks by: the per-image **spatial max** of the unit's channel.

- **Bands.** A unit's bands are intervals of that statistic between value edges taken from its
  quantiles (`BandSettings.quantiles`, default 0, .2, .4, .6, .8, 1: five bands of equal mass).
  Edge 0 is the unit's exact min, the last edge its exact max, inner edges come from the scan's
  quantile sketch; band b holds values v with edge_b <= v < edge_b+1, the last band also v == max.
  NaN never belongs to a band.
- **Samples.** Every image gets a seeded 64-bit priority, a mix (splitmix64) of the seed and the
  rank of its id among all ids, so it does not depend on sharding. Each (unit, band) keeps the
  `samples_per_band` images of smallest priority: a uniform random sample without replacement of
  the band's images, identical for any sharding and any order of adds and merges. One priority per
  image is shared by all units, so units' samples overlap and fewer images need decoding later.
- **Histograms.** `bins` equal-width bins per unit between its min and max (a constant unit: every
  value falls in bin 0); NaN is ignored.

Both follow the running-statistics protocol of state.py: add / merge / result / state / from_state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.scan.state import State, StateError, check_shape, take

_EMPTY = np.iinfo(np.uint64).max  # priority of an empty sample slot: above every real priority


@dataclass(frozen=True)
class BandSettings:
    """Band edges as quantiles (0 first, 1 last), samples kept per band, their seed, histogram bins."""

    quantiles: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    samples_per_band: int = 5
    seed: int = 0
    histogram_bins: int = 32

    def __post_init__(self) -> None:
        q = tuple(float(v) for v in self.quantiles)
        if len(q) < 2 or q[0] != 0.0 or q[-1] != 1.0 or any(b <= a for a, b in zip(q, q[1:])):
            raise LoupeError(f"scan.bands.quantiles must rise strictly from 0 to 1, got {list(self.quantiles)}")
        object.__setattr__(self, "quantiles", q)
        for name in ("samples_per_band", "histogram_bins"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise LoupeError(f"scan.bands.{name} must be a positive integer, got {value!r}")

    @property
    def bands(self) -> int:
        return len(self.quantiles) - 1


def band_thresholds(quantile_values: np.ndarray, minimum: np.ndarray, maximum: np.ndarray) -> np.ndarray:
    """[C, B+1] value edges: exact min and max outside, sketch quantiles inside, made non-decreasing."""
    edges = np.array(quantile_values, dtype=np.float64, copy=True)
    if edges.ndim != 2 or edges.shape[1] < 2:
        raise LoupeError(f"band quantile values must have shape [units, bands + 1], got {edges.shape}")
    edges[:, 0] = np.asarray(minimum, dtype=np.float64)
    edges[:, -1] = np.asarray(maximum, dtype=np.float64)
    edges[:, 1:-1] = np.clip(edges[:, 1:-1], edges[:, :1], edges[:, -1:])
    return np.maximum.accumulate(edges, axis=1)  # a unit without finite values stays NaN: no bands


def image_priority(ranks: np.ndarray, seed: int) -> np.ndarray:
    """A seeded uint64 priority per image id rank (splitmix64's finalizer)."""
    with np.errstate(over="ignore"):
        z = np.asarray(ranks, dtype=np.uint64) + np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def band_of(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Band index of each value ([R, C] values, [C, B+1] edges); -1 outside every band or NaN."""
    values = np.asarray(values, dtype=np.float64)
    bands = thresholds.shape[1] - 1
    index = np.full(values.shape, -1, dtype=np.int64)
    for b in range(bands):
        low, high = thresholds[:, b], thresholds[:, b + 1]
        inside = (values >= low) & ((values < high) | ((values == high) if b == bands - 1 else False))
        index[inside & (index < 0)] = b
    return index


@dataclass(frozen=True)
class BandSamples:
    """Flat rows sorted by (unit, band, slot), and the exact number of images in each band."""

    unit: np.ndarray  # int32
    band: np.ndarray  # int16
    slot: np.ndarray  # int16, 0.. by increasing priority
    image_index: np.ndarray  # int64 global listing position
    value: np.ndarray  # float64 (compared with the edges exactly)
    band_low: np.ndarray  # float64
    band_high: np.ndarray  # float64
    band_count: np.ndarray  # int64 [C, B]

    def to_table(self) -> pa.Table:
        return pa.table({"unit": pa.array(self.unit), "band": pa.array(self.band), "slot": pa.array(self.slot),
                         "image_index": pa.array(self.image_index), "value": pa.array(self.value),
                         "band_low": pa.array(self.band_low), "band_high": pa.array(self.band_high)})


class BandSampler:
    """Per (unit, band): the `samples_per_band` images of smallest seeded priority among those in the band."""

    def __init__(self, thresholds: np.ndarray, samples_per_band: int, seed: int) -> None:
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        if self.thresholds.ndim != 2 or self.thresholds.shape[1] < 2:
            raise LoupeError(f"band thresholds must have shape [units, bands + 1], got {self.thresholds.shape}")
        if not isinstance(samples_per_band, (int, np.integer)) or samples_per_band < 1:
            raise LoupeError(f"samples_per_band must be a positive integer, got {samples_per_band!r}")
        self.samples_per_band = int(samples_per_band)
        self.seed = int(seed)
        units, bands = self.thresholds.shape[0], self.thresholds.shape[1] - 1
        shape = (units, bands, self.samples_per_band)
        self.priority = np.full(shape, _EMPTY, dtype=np.uint64)
        self.rank = np.full(shape, -1, dtype=np.int64)
        self.image = np.full(shape, -1, dtype=np.int64)
        self.value = np.full(shape, np.nan, dtype=np.float64)
        self.count = np.zeros((units, bands), dtype=np.int64)

    @property
    def units(self) -> int:
        return self.thresholds.shape[0]

    def add(self, values: np.ndarray, positions: np.ndarray, ranks: np.ndarray) -> None:
        """Fold in [R, C] values of images at global `positions` whose ids have `ranks`."""
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != self.units:
            raise LoupeError(f"band sampler expects values of shape [images, {self.units}], got {values.shape}")
        positions = np.asarray(positions, dtype=np.int64)
        ranks = np.asarray(ranks, dtype=np.int64)
        if positions.shape != (len(values),) or ranks.shape != (len(values),):
            raise LoupeError("band sampler: positions and ranks need one entry per row of values")
        band = band_of(values, self.thresholds)  # [R, C]
        priority = image_priority(ranks, self.seed)
        by_unit = values.T.astype(np.float64)
        m = self.samples_per_band
        for b in range(self.count.shape[1]):
            inside = band == b  # [R, C]
            self.count[:, b] += inside.sum(axis=0)
            if not inside.any():
                continue
            keys = np.where(inside.T, priority[None, :], _EMPTY)  # [C, R]
            take_n = min(m, keys.shape[1])
            best = np.argpartition(keys, take_n - 1, axis=1)[:, :take_n] if take_n < keys.shape[1] else \
                np.broadcast_to(np.arange(keys.shape[1]), keys.shape)
            cand_priority = np.take_along_axis(keys, best, axis=1)
            cand_rank = np.where(cand_priority == _EMPTY, -1, ranks[best])
            cand_image = np.where(cand_priority == _EMPTY, -1, positions[best])
            cand_value = np.take_along_axis(by_unit, best, axis=1)
            self._keep(b, cand_priority, cand_rank, cand_image, cand_value)

    def _keep(self, b: int, priority: np.ndarray, rank: np.ndarray, image: np.ndarray, value: np.ndarray) -> None:
        """Merge candidates [C, n] of band b into the kept slots: the m smallest (priority, rank)."""
        p = np.concatenate([self.priority[:, b], priority], axis=1)
        r = np.concatenate([self.rank[:, b], rank], axis=1)
        order = np.lexsort((r, p), axis=1)[:, :self.samples_per_band]
        self.priority[:, b] = np.take_along_axis(p, order, axis=1)
        self.rank[:, b] = np.take_along_axis(r, order, axis=1)
        self.image[:, b] = np.take_along_axis(np.concatenate([self.image[:, b], image], axis=1), order, axis=1)
        self.value[:, b] = np.take_along_axis(np.concatenate([self.value[:, b], value], axis=1), order, axis=1)
        empty = self.priority[:, b] == _EMPTY
        self.rank[:, b][empty], self.image[:, b][empty], self.value[:, b][empty] = -1, -1, np.nan

    def merge(self, other: "BandSampler") -> "BandSampler":
        if (other.thresholds.shape != self.thresholds.shape or other.samples_per_band != self.samples_per_band
                or other.seed != self.seed or not np.array_equal(other.thresholds, self.thresholds, equal_nan=True)):
            raise LoupeError("cannot merge band samplers with different thresholds, sizes or seeds")
        merged = BandSampler.from_state(self.state())
        for b in range(self.count.shape[1]):
            merged._keep(b, other.priority[:, b], other.rank[:, b], other.image[:, b], other.value[:, b])
        merged.count = self.count + other.count
        return merged

    def result(self) -> BandSamples:
        filled = self.priority != _EMPTY
        unit, band, slot = np.nonzero(filled)
        return BandSamples(
            unit=unit.astype(np.int32), band=band.astype(np.int16), slot=slot.astype(np.int16),
            image_index=self.image[filled], value=self.value[filled],
            band_low=self.thresholds[unit, band], band_high=self.thresholds[unit, band + 1],
            band_count=self.count.copy(),
        )

    def state(self) -> State:
        return {"thresholds": self.thresholds.copy(), "samples_per_band": np.int64(self.samples_per_band),
                "seed": np.int64(self.seed), "priority": self.priority.copy(), "rank": self.rank.copy(),
                "image": self.image.copy(), "value": self.value.copy(), "count": self.count.copy()}

    @classmethod
    def from_state(cls, state: State) -> "BandSampler":
        thresholds = take(state, "thresholds", "float", ndim=2)
        per_band = int(take(state, "samples_per_band", "int", ndim=0))
        sampler = cls(thresholds, per_band, int(take(state, "seed", "int", ndim=0)))
        shape = sampler.priority.shape
        sampler.priority = check_shape("priority", take(state, "priority", "int", ndim=3), shape).astype(np.uint64)
        sampler.rank = check_shape("rank", take(state, "rank", "int", ndim=3), shape).astype(np.int64)
        sampler.image = check_shape("image", take(state, "image", "int", ndim=3), shape).astype(np.int64)
        sampler.value = check_shape("value", take(state, "value", "float", ndim=3), shape).astype(np.float64)
        sampler.count = check_shape("count", take(state, "count", "int", ndim=2), shape[:2]).astype(np.int64)
        return sampler


class ValueHistogram:
    """Equal-width bins per unit over [low, high]; NaN ignored; a constant unit counts in bin 0."""

    def __init__(self, low: np.ndarray, high: np.ndarray, bins: int) -> None:
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        if self.low.ndim != 1 or self.low.shape != self.high.shape:
            raise LoupeError(f"histogram bounds must be two [units] arrays, got {self.low.shape} and {self.high.shape}")
        if not isinstance(bins, (int, np.integer)) or bins < 1:
            raise LoupeError(f"histogram bins must be a positive integer, got {bins!r}")
        self.bins = int(bins)
        self.counts = np.zeros((len(self.low), self.bins), dtype=np.int64)

    def edges(self) -> np.ndarray:
        """[C, bins + 1] bin edges."""
        return self.low[:, None] + (self.high - self.low)[:, None] * np.linspace(0.0, 1.0, self.bins + 1)[None, :]

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(self.low):
            raise LoupeError(f"histogram expects values of shape [images, {len(self.low)}], got {values.shape}")
        width = self.high - self.low
        with np.errstate(invalid="ignore", divide="ignore"):
            scaled = np.where(width > 0, (values - self.low) / np.where(width > 0, width, 1.0) * self.bins, 0.0)
        ok = np.isfinite(values) & np.isfinite(scaled) & (values >= self.low) & (values <= self.high)
        index = np.clip(np.floor(np.where(ok, scaled, 0.0)).astype(np.int64), 0, self.bins - 1)
        units = np.broadcast_to(np.arange(len(self.low)), values.shape)
        flat = (units * self.bins + index)[ok]
        self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)

    def merge(self, other: "ValueHistogram") -> "ValueHistogram":
        if other.bins != self.bins or not (np.array_equal(other.low, self.low, equal_nan=True)
                                           and np.array_equal(other.high, self.high, equal_nan=True)):
            raise LoupeError("cannot merge histograms with different bins or bounds")
        merged = ValueHistogram(self.low, self.high, self.bins)
        merged.counts = self.counts + other.counts
        return merged

    def result(self) -> np.ndarray:
        return self.counts.copy()

    def to_table(self) -> pa.Table:
        edges = self.edges()
        units, bins = np.meshgrid(np.arange(len(self.low)), np.arange(self.bins), indexing="ij")
        return pa.table({"unit": pa.array(units.ravel().astype(np.int32)), "bin": pa.array(bins.ravel().astype(np.int16)),
                         "lower": pa.array(edges[:, :-1].ravel()), "upper": pa.array(edges[:, 1:].ravel()),
                         "count": pa.array(self.counts.ravel())})

    def state(self) -> State:
        return {"low": self.low.copy(), "high": self.high.copy(), "bins": np.int64(self.bins), "counts": self.counts.copy()}

    @classmethod
    def from_state(cls, state: State) -> "ValueHistogram":
        histogram = cls(take(state, "low", "float", ndim=1), take(state, "high", "float", ndim=1),
                        int(take(state, "bins", "int", ndim=0)))
        histogram.counts = check_shape("counts", take(state, "counts", "int", ndim=2),
                                       histogram.counts.shape).astype(np.int64)
        return histogram


__all__ = ["BandSamples", "BandSampler", "BandSettings", "StateError", "ValueHistogram", "band_of",
           "band_thresholds", "image_priority"]
