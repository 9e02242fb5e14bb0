"""Quantile-band samples and histograms of each unit's per-image activation, mergeable.

The statistic is the one the scan ranks by: the per-image **spatial max** of the unit (one value
per image and unit, the pooled `max` array; NaN for a skipped image).

- **Bands.** A unit's bands are intervals of that statistic between value edges taken at its
  quantiles (`BandSettings.quantiles`, default 0, .2, .4, .6, .8, 1: five bands of equal mass).
  Edge 0 is the unit's exact min, the last edge its exact max, the inner edges come from the scan's
  quantile sketch, and the edges are made non-decreasing (`band_thresholds`). Band b holds the
  values v with edge_b <= v < edge_b+1; the last band also holds v == max. Values are compared in
  float64. NaN never belongs to a band, and a unit without any value (NaN edges) has no bands.
- **Samples.** Every image gets a seeded 64-bit priority, splitmix64's finalizer applied to the
  rank of its id among all ids (`image_priority`), so it depends on the image and the seed, never
  on sharding or order. Each (unit, band) keeps the `samples_per_band` images of smallest priority
  (ties broken by rank; they cannot happen, the mix is a bijection of the rank): a uniform random
  sample without replacement of the band's images, identical for any sharding of the images and
  any order of adds and merges. One priority per image is shared by all units, so the samples of
  different units overlap and fewer images need decoding for the example pictures.
- **Histograms.** `bins` equal-width bins per unit between its min and max, with numpy.histogram's
  edges and rule (bin i: edge_i <= v < edge_i+1, the last bin also v == max). A constant unit
  (min == max) has every edge equal to that value and counts everything in bin 0. NaN, values
  outside [min, max] and units without finite bounds are not counted.

Both follow the running-statistics protocol of state.py: add / merge / result / state / from_state.
Each image must be added once (shards are disjoint ranges of the listing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.scan.state import State, StateError, check_shape, scalar, take

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_EMPTY_PRIORITY = np.iinfo(np.uint64).max  # an empty slot: rank -1, image -1, value NaN, this priority
_INT16 = np.iinfo(np.int16).max
_SEED_LIMIT = 2**63  # seeds are saved as int64


def _positive_int(value, name: str, limit: int = _INT16) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= limit:
        raise LoupeError(f"{name} must be an integer from 1 to {limit}, got {value!r}")
    return int(value)


def _seed(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < _SEED_LIMIT:
        raise LoupeError(f"{name} must be an integer from 0 to 2**63 - 1, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class BandSettings:
    """Band edges as quantiles (0 first, 1 last), samples kept per band, their seed, histogram bins."""

    quantiles: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    samples_per_band: int = 5
    seed: int = 0
    histogram_bins: int = 32

    def __post_init__(self) -> None:
        try:
            q = tuple(float(v) for v in self.quantiles)
        except (TypeError, ValueError):
            raise LoupeError(f"scan.bands.quantiles must be a list of numbers, got {self.quantiles!r}") from None
        if (len(q) < 2 or q[0] != 0.0 or q[-1] != 1.0 or not all(math.isfinite(v) for v in q)
                or any(b <= a for a, b in zip(q, q[1:]))):
            raise LoupeError("scan.bands.quantiles must be at least two numbers rising strictly from 0.0 to 1.0, "
                             f"got {list(self.quantiles)}")
        if len(q) - 1 > _INT16:
            raise LoupeError(f"scan.bands.quantiles may make at most {_INT16} bands, got {len(q) - 1}")
        object.__setattr__(self, "quantiles", q)
        _positive_int(self.samples_per_band, "scan.bands.samples_per_band")
        _positive_int(self.histogram_bins, "scan.bands.histogram_bins")
        _seed(self.seed, "scan.bands.seed")

    @property
    def bands(self) -> int:
        return len(self.quantiles) - 1


def band_thresholds(quantile_values: np.ndarray, minimum: np.ndarray, maximum: np.ndarray) -> np.ndarray:
    """[C, B+1] value edges: exact min and max outside, sketch quantiles inside, made non-decreasing.

    A unit whose min or max is NaN (no finite value) gets NaN edges: it has no bands.
    """
    edges = np.array(quantile_values, dtype=np.float64, copy=True)
    if edges.ndim != 2 or edges.shape[1] < 2:
        raise LoupeError(f"band quantile values must have shape [units, bands + 1], got {edges.shape}")
    low = np.asarray(minimum, dtype=np.float64)
    high = np.asarray(maximum, dtype=np.float64)
    if low.shape != (len(edges),) or high.shape != (len(edges),):
        raise LoupeError(f"band minimum and maximum must have shape [{len(edges)}], got {low.shape} and {high.shape}")
    empty = np.isnan(low) | np.isnan(high)
    if np.any(low[~empty] > high[~empty]):
        unit = int(np.flatnonzero(~empty & (low > high))[0])
        raise LoupeError(f"band minimum exceeds maximum for unit {unit}: {low[unit]} > {high[unit]}")
    missing = np.isnan(edges[:, 1:-1]).any(axis=1) & ~empty
    if missing.any():
        raise LoupeError(f"band quantile values of unit {int(np.flatnonzero(missing)[0])} are NaN "
                         "although the unit has a finite min and max")
    edges[:, 0], edges[:, -1] = low, high
    edges[:, 1:-1] = np.clip(edges[:, 1:-1], low[:, None], high[:, None])
    edges = np.maximum.accumulate(edges, axis=1)
    edges[empty] = np.nan
    return edges


def image_priority(ranks: np.ndarray, seed: int) -> np.ndarray:
    """uint64 priority of each image id rank: splitmix64's finalizer of rank + (seed + 1) * golden.

    A bijection of the rank for a fixed seed, so two images never share a priority.
    """
    ranks = np.asarray(ranks)
    if ranks.dtype.kind not in "iu" or (ranks.size and ranks.min() < 0):
        raise LoupeError(f"image ranks must be non-negative integers, got dtype {ranks.dtype}")
    seed = _seed(seed, "band seed")
    with np.errstate(over="ignore"):
        z = ranks.astype(np.uint64) + np.uint64(seed) * _GOLDEN + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def band_of(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Band index (int16) of each value ([R, C] values, [C, B+1] edges); -1 for NaN or outside every band."""
    values = np.asarray(values, dtype=np.float64)
    bands = thresholds.shape[1] - 1
    index = np.full(values.shape, -1, dtype=np.int16)
    for b in range(bands):
        low, high = thresholds[:, b], thresholds[:, b + 1]
        inside = (values >= low) & (values < high)
        if b == bands - 1:
            inside |= values == high
        index[inside & (index < 0)] = b
    return index


@dataclass(frozen=True)
class BandSamples:
    """Flat rows sorted by (unit, band, slot), and the exact number of images in each band."""

    unit: np.ndarray  # int32
    band: np.ndarray  # int16
    slot: np.ndarray  # int16, 0.. by increasing priority
    image_index: np.ndarray  # int64 global listing position
    value: np.ndarray  # float32: exact for the float16/float32 pooled maxima a scan writes
    band_low: np.ndarray  # float64 the band's lower edge
    band_high: np.ndarray  # float64 the band's upper edge
    band_count: np.ndarray  # int64 [C, B] images in each band

    def to_table(self) -> pa.Table:
        """One row per sample: unit, band, slot, image_index, value, band_low, band_high."""
        return pa.table({"unit": pa.array(self.unit, pa.int32()), "band": pa.array(self.band, pa.int16()),
                         "slot": pa.array(self.slot, pa.int16()), "image_index": pa.array(self.image_index, pa.int64()),
                         "value": pa.array(self.value, pa.float32()), "band_low": pa.array(self.band_low, pa.float64()),
                         "band_high": pa.array(self.band_high, pa.float64())})


def _check_thresholds(thresholds: np.ndarray) -> np.ndarray:
    thresholds = np.array(thresholds, dtype=np.float64, copy=True)
    if thresholds.ndim != 2 or thresholds.shape[1] < 2:
        raise LoupeError(f"band thresholds must have shape [units, bands + 1], got {thresholds.shape}")
    if thresholds.shape[1] - 1 > _INT16:
        raise LoupeError(f"band thresholds may make at most {_INT16} bands, got {thresholds.shape[1] - 1}")
    nan = np.isnan(thresholds)
    partial = nan.any(axis=1) & ~nan.all(axis=1)
    with np.errstate(invalid="ignore"):
        falling = (np.diff(thresholds, axis=1) < 0).any(axis=1)
    if partial.any() or falling.any():
        unit = int(np.flatnonzero(partial | falling)[0])
        raise LoupeError(f"band thresholds of unit {unit} must be non-decreasing (or all NaN), "
                         f"got {thresholds[unit].tolist()}")
    return thresholds


class BandSampler:
    """Per (unit, band): the `samples_per_band` images of smallest seeded priority among those in the band.

    Memory is O(units * bands * samples_per_band) whatever the number of images added.
    """

    def __init__(self, thresholds: np.ndarray, samples_per_band: int, seed: int) -> None:
        self.thresholds = _check_thresholds(thresholds)
        self.samples_per_band = _positive_int(samples_per_band, "band samples_per_band")
        self.seed = _seed(seed, "band seed")
        units, bands = self.thresholds.shape[0], self.thresholds.shape[1] - 1
        shape = (units, bands, self.samples_per_band)
        self.priority = np.full(shape, _EMPTY_PRIORITY, dtype=np.uint64)
        self.rank = np.full(shape, -1, dtype=np.int64)
        self.image = np.full(shape, -1, dtype=np.int64)
        self.value = np.full(shape, np.nan, dtype=np.float32)
        self.count = np.zeros((units, bands), dtype=np.int64)

    @property
    def units(self) -> int:
        return self.thresholds.shape[0]

    @property
    def bands(self) -> int:
        return self.thresholds.shape[1] - 1

    def add(self, values: np.ndarray, positions: np.ndarray, ranks: np.ndarray) -> None:
        """Fold in [R, C] values of images at global listing `positions` whose ids have `ranks`."""
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != self.units or values.dtype.kind not in "fiu":
            raise LoupeError(f"band sampler expects numeric values of shape [images, {self.units}], "
                             f"got {values.dtype} {values.shape}")
        positions = np.asarray(positions)
        ranks = np.asarray(ranks)
        if positions.shape != (len(values),) or ranks.shape != (len(values),):
            raise LoupeError(f"band sampler: positions {positions.shape} and ranks {ranks.shape} need one entry "
                             f"per row of values ({len(values)})")
        if positions.dtype.kind not in "iu" or (positions.size and positions.min() < 0):
            raise LoupeError("band sampler: positions must be non-negative integers")
        priority = image_priority(ranks, self.seed)
        order = np.lexsort((ranks, priority))  # rows by increasing priority: a band's first rows are its sample
        values = values[order]
        priority, ranks, positions = priority[order], ranks[order].astype(np.int64), positions[order].astype(np.int64)
        band = band_of(values, self.thresholds)  # [R, C]
        m, units = self.samples_per_band, np.arange(self.units)
        for b in range(self.bands):
            inside = band == b
            seen = np.cumsum(inside, axis=0, dtype=np.int64)  # [R, C]: images of band b so far, per unit
            self.count[:, b] += seen[-1] if len(seen) else 0
            row, unit = np.nonzero(inside & (seen <= m))
            if not len(row):
                continue
            slot = seen[row, unit] - 1
            shape = (self.units, m)
            cand_priority = np.full(shape, _EMPTY_PRIORITY, dtype=np.uint64)
            cand_rank = np.full(shape, -1, dtype=np.int64)
            cand_image = np.full(shape, -1, dtype=np.int64)
            cand_value = np.full(shape, np.nan, dtype=np.float32)
            cand_priority[unit, slot] = priority[row]
            cand_rank[unit, slot] = ranks[row]
            cand_image[unit, slot] = positions[row]
            cand_value[unit, slot] = values[row, unit]
            touched = np.zeros(self.units, dtype=bool)
            touched[unit] = True
            self._keep(b, units[touched], cand_priority[touched], cand_rank[touched], cand_image[touched],
                       cand_value[touched])

    def _keep(self, b: int, units: np.ndarray, priority: np.ndarray, rank: np.ndarray, image: np.ndarray,
              value: np.ndarray) -> None:
        """Merge candidate slots [n, m] of band b for `units` into the kept ones: the m smallest (priority, rank)."""
        p = np.concatenate([self.priority[units, b], priority], axis=1)
        r = np.concatenate([self.rank[units, b], rank], axis=1)
        order = np.lexsort((r, p, r < 0), axis=1)[:, :self.samples_per_band]  # filled slots first
        self.priority[units, b] = np.take_along_axis(p, order, axis=1)
        self.rank[units, b] = np.take_along_axis(r, order, axis=1)
        self.image[units, b] = np.take_along_axis(np.concatenate([self.image[units, b], image], axis=1), order, axis=1)
        self.value[units, b] = np.take_along_axis(np.concatenate([self.value[units, b], value], axis=1), order, axis=1)

    def merge(self, other: "BandSampler") -> "BandSampler":
        """A new sampler holding both inputs' images (neither input changes)."""
        if (other.thresholds.shape != self.thresholds.shape or other.samples_per_band != self.samples_per_band
                or other.seed != self.seed or not np.array_equal(other.thresholds, self.thresholds, equal_nan=True)):
            raise LoupeError("cannot merge band samplers with different thresholds, samples_per_band or seeds")
        merged = BandSampler.from_state(self.state())
        units = np.arange(self.units)
        for b in range(self.bands):
            merged._keep(b, units, other.priority[:, b], other.rank[:, b], other.image[:, b], other.value[:, b])
        merged.count = self.count + other.count
        return merged

    def result(self) -> BandSamples:
        filled = self.rank >= 0
        unit, band, slot = np.nonzero(filled)  # C order: sorted by (unit, band, slot)
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
        """Rebuild a sampler from `state()`, refusing arrays whose shapes, types or contents are inconsistent."""
        try:
            sampler = cls(take(state, "thresholds", "float", ndim=2), scalar(state, "samples_per_band", "int"),
                          scalar(state, "seed", "int"))
        except StateError:
            raise
        except LoupeError as error:
            raise StateError(f"band sampler state: {error}") from None
        shape = sampler.priority.shape
        priority = check_shape("priority", take(state, "priority", "int", ndim=3), shape)
        if priority.dtype != np.uint64:
            raise StateError(f"statistic state array 'priority' must be uint64, got {priority.dtype}")
        rank = check_shape("rank", take(state, "rank", "int", ndim=3), shape).astype(np.int64)
        image = check_shape("image", take(state, "image", "int", ndim=3), shape).astype(np.int64)
        value = check_shape("value", take(state, "value", "float", ndim=3), shape).astype(np.float32)
        count = check_shape("count", take(state, "count", "int", ndim=2), shape[:2]).astype(np.int64)
        filled = rank >= 0
        if np.any(filled[..., 1:] & ~filled[..., :-1]):
            raise StateError("statistic state array 'rank': filled sample slots must come first in each band")
        if np.any(priority[filled] != image_priority(rank[filled], sampler.seed)):
            raise StateError("statistic state array 'priority' does not match the ranks and the seed")
        if np.any((priority[..., 1:] <= priority[..., :-1]) & filled[..., 1:]):
            raise StateError("statistic state array 'priority' must increase along the slots of a band")
        if (np.any(image[filled] < 0) or np.any(image[~filled] != -1) or np.any(priority[~filled] != _EMPTY_PRIORITY)
                or not np.all(np.isnan(value[~filled]))):
            raise StateError("statistic state array 'image': filled slots need an image, empty slots none")
        if np.any(count < filled.sum(axis=2)):
            raise StateError("statistic state array 'count' is below the number of samples kept in a band")
        sampler.priority, sampler.rank, sampler.image, sampler.value, sampler.count = priority.copy(), rank, image, value, count
        return sampler


def _equal_width_edges(low: np.ndarray, high: np.ndarray, bins: int) -> np.ndarray:
    """[C, bins + 1] edges, each row equal to np.linspace(low, high, bins + 1) (numpy.histogram's edges)."""
    delta = high - low
    step = delta / bins
    k = np.arange(bins + 1, dtype=np.float64)[None, :]
    with np.errstate(invalid="ignore"):
        edges = np.where((step == 0)[:, None], k / bins * delta[:, None], k * step[:, None]) + low[:, None]
    edges[:, -1] = high
    return edges


class ValueHistogram:
    """Equal-width bins per unit over [low, high] (numpy.histogram's edges and rule); NaN ignored.

    A constant unit (low == high) counts everything in bin 0; a unit with a non-finite bound counts nothing.
    """

    def __init__(self, low: np.ndarray, high: np.ndarray, bins: int) -> None:
        self.low = np.array(low, dtype=np.float64, copy=True)
        self.high = np.array(high, dtype=np.float64, copy=True)
        if self.low.ndim != 1 or self.low.shape != self.high.shape:
            raise LoupeError(f"histogram bounds must be two [units] arrays, got {self.low.shape} and {self.high.shape}")
        self.bins = _positive_int(bins, "histogram bins")
        with np.errstate(invalid="ignore"):
            bad = self.low > self.high
        if bad.any():
            unit = int(np.flatnonzero(bad)[0])
            raise LoupeError(f"histogram low exceeds high for unit {unit}: {self.low[unit]} > {self.high[unit]}")
        self.counts = np.zeros((len(self.low), self.bins), dtype=np.int64)
        self._edges = _equal_width_edges(self.low, self.high, self.bins)
        self._usable = np.isfinite(self.low) & np.isfinite(self.high)

    @property
    def units(self) -> int:
        return len(self.low)

    def edges(self) -> np.ndarray:
        """[C, bins + 1] bin edges."""
        return self._edges.copy()

    def add(self, values: np.ndarray) -> None:
        """Count [R, C] values."""
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != self.units or values.dtype.kind not in "fiu":
            raise LoupeError(f"histogram expects numeric values of shape [images, {self.units}], "
                             f"got {values.dtype} {values.shape}")
        values = values.astype(np.float64)
        with np.errstate(invalid="ignore"):
            keep = (values >= self.low) & (values <= self.high) & self._usable
            width = self.high - self.low
            scale = np.where(width > 0, self.bins / np.where(width > 0, width, 1.0), 0.0)
            guess = np.where(keep, (values - self.low) * scale, 0.0)
        index = np.clip(guess.astype(np.int64), 0, self.bins - 1)
        row = np.arange(self.units, dtype=np.int64) * (self.bins + 1)  # offset of each unit's edges
        edges = self._edges.ravel()
        spread = width > 0  # a constant unit keeps everything in bin 0
        for _ in range(self.bins + 1):  # settle on edge_i <= v < edge_i+1 against the exact edges
            down = keep & (index > 0) & (values < edges[row + index])
            up = keep & spread & (index < self.bins - 1) & (values >= edges[row + index + 1])
            if not (down.any() or up.any()):
                break
            index += up.view(np.int8) - down.view(np.int8)
        flat = (np.arange(self.units, dtype=np.int64) * self.bins + index)[keep]
        self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)

    def merge(self, other: "ValueHistogram") -> "ValueHistogram":
        """A new histogram with both inputs' counts."""
        if other.bins != self.bins or not (np.array_equal(other.low, self.low, equal_nan=True)
                                           and np.array_equal(other.high, self.high, equal_nan=True)):
            raise LoupeError("cannot merge histograms with different bins or bounds")
        merged = ValueHistogram(self.low, self.high, self.bins)
        merged.counts = self.counts + other.counts
        return merged

    def result(self) -> np.ndarray:
        """int64 [C, bins] counts."""
        return self.counts.copy()

    def to_table(self) -> pa.Table:
        """One row per unit and bin: unit, bin, lower, upper, count."""
        units, bins = np.meshgrid(np.arange(self.units), np.arange(self.bins), indexing="ij")
        return pa.table({"unit": pa.array(units.ravel().astype(np.int32)), "bin": pa.array(bins.ravel().astype(np.int16)),
                         "lower": pa.array(self._edges[:, :-1].ravel()), "upper": pa.array(self._edges[:, 1:].ravel()),
                         "count": pa.array(self.counts.ravel())})

    def state(self) -> State:
        return {"low": self.low.copy(), "high": self.high.copy(), "bins": np.int64(self.bins), "counts": self.counts.copy()}

    @classmethod
    def from_state(cls, state: State) -> "ValueHistogram":
        """Rebuild a histogram from `state()`, refusing wrong shapes, types or negative counts."""
        try:
            histogram = cls(take(state, "low", "float", ndim=1), take(state, "high", "float", ndim=1),
                            scalar(state, "bins", "int"))
        except StateError:
            raise
        except LoupeError as error:
            raise StateError(f"histogram state: {error}") from None
        counts = check_shape("counts", take(state, "counts", "int", ndim=2), histogram.counts.shape).astype(np.int64)
        if np.any(counts < 0):
            raise StateError("statistic state array 'counts' holds negative counts")
        histogram.counts = counts
        return histogram


__all__ = ["BandSamples", "BandSampler", "BandSettings", "ValueHistogram", "band_of", "band_thresholds",
           "image_priority"]
