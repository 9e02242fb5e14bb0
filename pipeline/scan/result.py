"""What a scan leaves behind: per-unit examples and statistics, compact and mergeable.

A `ScanResult` holds only numpy arrays and plain values (a few MB for thousands of units).
Results of disjoint shards of one listing merge associatively and commutatively into exactly
the result of a single pass over their union:

- top-k/bottom-k: the k largest int64 sort keys of both sides (value, then image id; see keys.py);
- sums: integer superaccumulators added exactly (exact_sum.py); counts and sketch buckets added;
- skipped images and covered ranges: united (merging a shard twice is an error, not a double count).

Every part follows one protocol (state.py): `merge(other)`, `state()` -> plain arrays and
`from_state(state)`, so a shard's result is saved as an `.npz` of numbers and strings, never a
pickle, and `from_state(r.state())` equals `r` bit for bit.

`units_table`, `examples_table`, `skipped_table` and `sketch_table` give Arrow tables ready for
storage; statistics are also available as numpy arrays through `LayerResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from loupe.pipeline.data.loader import SkippedImage
from loupe.pipeline.errors import LoupeError
from loupe.pipeline.scan import sketch
from loupe.pipeline.scan.accumulate import STATISTICS
from loupe.pipeline.scan.exact_sum import ExactSum
from loupe.pipeline.scan.keys import PAD, decode_values
from loupe.pipeline.scan.layout import positions_count, to_yx
from loupe.pipeline.scan.sketch import QuantileSketch
from loupe.pipeline.scan.state import State, check_shape, prefixed, scalar, strings, take, unprefixed

RESULT_FORMAT = 2
QUANTILES = (0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99)
_EXAMPLE_ARRAYS = ("keys", "image_index", "position", "box")
_COUNTS = ("images", "nonfinite", "max_positive")


class MergeError(LoupeError):
    """Two scan results cannot be merged (different model, listing, settings, or overlapping shards)."""


@dataclass(eq=False)
class Examples:
    """k example slots per unit, best first; empty slots have key PAD and index -1."""

    keys: np.ndarray  # int64 (C, k)
    image_index: np.ndarray  # int64 (C, k): global listing position
    position: np.ndarray  # int64 (C, k): flattened position of the max in the feature map
    box: np.ndarray  # int32 (C, k, 4): (y0, x0, y1, x1) crop box in input pixels

    def values(self, bottom: bool) -> np.ndarray:
        return decode_values(self.keys, bottom)

    def filled(self) -> np.ndarray:
        return self.keys != PAD

    def merge(self, other: "Examples") -> "Examples":
        """The k best slots of both (keys are unique per image, so the order of merges does not matter)."""
        k = self.keys.shape[1]
        keys = np.concatenate([self.keys, other.keys], axis=1)
        order = np.argsort(keys, axis=1, kind="stable")[:, ::-1][:, :k]

        def take_best(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            both = np.concatenate([a, b], axis=1)
            index = order.reshape(order.shape + (1,) * (both.ndim - 2))
            return np.take_along_axis(both, index, axis=1)

        return Examples(*(take_best(getattr(self, n), getattr(other, n)) for n in _EXAMPLE_ARRAYS))

    def equals(self, other: "Examples") -> bool:
        return all(np.array_equal(getattr(self, n), getattr(other, n)) for n in _EXAMPLE_ARRAYS)

    def state(self) -> State:
        return {name: np.array(getattr(self, name)) for name in _EXAMPLE_ARRAYS}

    @classmethod
    def from_state(cls, state: State) -> "Examples":
        keys = take(state, "keys", "int", ndim=2)
        return cls(
            keys=keys.astype(np.int64),
            image_index=check_shape("image_index", take(state, "image_index", "int", ndim=2), keys.shape).astype(np.int64),
            position=check_shape("position", take(state, "position", "int", ndim=2), keys.shape).astype(np.int64),
            box=check_shape("box", take(state, "box", "int", ndim=3), (*keys.shape, 4)).astype(np.int32),
        )


@dataclass(eq=False)
class LayerResult:
    """Per-unit results of one layer; arrays are indexed by unit (channel)."""

    layer: str
    layout: str
    channels: int
    spatial: tuple[int, ...]
    top: Examples
    bottom: Examples
    images: np.ndarray  # int64 (C,): images with finite activations
    nonfinite: np.ndarray  # int64 (C,): images skipped by the statistics (NaN/inf)
    sums: ExactSum  # (len(STATISTICS), C) exact sums
    max_positive: np.ndarray  # int64 (C,): images whose max is > 0
    sketch: QuantileSketch  # of per-image maxima

    @property
    def positions(self) -> int:
        return positions_count(self.spatial)

    def totals(self) -> dict[str, np.ndarray]:
        """float64 sums over images of each statistic in STATISTICS."""
        values = self.sums.result()
        return {name: values[i] for i, name in enumerate(STATISTICS)}

    def statistics(self) -> dict[str, np.ndarray]:
        """Per-unit statistics as float64 arrays (NaN for units that saw no finite image)."""
        totals = self.totals()
        with np.errstate(invalid="ignore", divide="ignore"):
            n = self.images.astype(np.float64)
            max_mean = totals["max"] / n
            act_mean = totals["mean"] / n
            stats = {
                "images": self.images,
                "nonfinite_images": self.nonfinite,
                "act_mean": act_mean,
                "act_std": np.sqrt(np.maximum(totals["mean_squared"] / n - act_mean**2, 0.0)),
                "max_mean": max_mean,
                "max_std": np.sqrt(np.maximum(totals["max_squared"] / n - max_mean**2, 0.0)),
                "max_min": self.bottom.values(bottom=True)[:, 0].astype(np.float64),
                "max_max": self.top.values(bottom=False)[:, 0].astype(np.float64),
                "max_frac_positive": self.max_positive / n,
            }
        quantiles = self.quantiles(QUANTILES, stats["max_min"], stats["max_max"])
        for i, q in enumerate(QUANTILES):
            stats[f"max_p{round(q * 100):02d}"] = quantiles[:, i]
        return stats

    def quantiles(self, qs: Sequence[float], low: np.ndarray | None = None, high: np.ndarray | None = None) -> np.ndarray:
        """(C, len(qs)) quantiles of per-image maxima from the sketch (1% relative accuracy)."""
        low = self.bottom.values(bottom=True)[:, 0] if low is None else low
        high = self.top.values(bottom=False)[:, 0] if high is None else high
        return self.sketch.result(np.asarray(qs, dtype=np.float64), low, high)

    def merge(self, other: "LayerResult") -> "LayerResult":
        if (self.layer, self.channels, tuple(self.spatial)) != (other.layer, other.channels, tuple(other.spatial)):
            raise MergeError(f"layer {self.layer} has shape {(self.channels, *self.spatial)} in one result "
                             f"and {(other.channels, *other.spatial)} in the other")
        return replace(
            self,
            top=self.top.merge(other.top),
            bottom=self.bottom.merge(other.bottom),
            images=self.images + other.images,
            nonfinite=self.nonfinite + other.nonfinite,
            sums=self.sums.merge(other.sums),
            max_positive=self.max_positive + other.max_positive,
            sketch=self.sketch.merge(other.sketch),
        )

    def equals(self, other: "LayerResult") -> bool:
        if (self.layer, self.layout, self.channels, tuple(self.spatial)) != (
                other.layer, other.layout, other.channels, tuple(other.spatial)):
            return False
        if not all(np.array_equal(getattr(self, n), getattr(other, n)) for n in _COUNTS):
            return False
        return (self.top.equals(other.top) and self.bottom.equals(other.bottom)
                and _states_equal(self.sums.state(), other.sums.state())
                and _states_equal(self.sketch.state(), other.sketch.state()))

    def state(self) -> State:
        return {
            "name": np.array(self.layer), "layout": np.array(self.layout), "channels": np.int64(self.channels),
            "spatial": np.array(self.spatial, dtype=np.int64),
            **{name: np.array(getattr(self, name)) for name in _COUNTS},
            **prefixed("top", self.top.state()), **prefixed("bottom", self.bottom.state()),
            **prefixed("sums", self.sums.state()), **prefixed("sketch", self.sketch.state()),
        }

    @classmethod
    def from_state(cls, state: State) -> "LayerResult":
        channels = scalar(state, "channels", "int")
        counts = {name: check_shape(name, take(state, name, "int", ndim=1), (channels,)).astype(np.int64)
                  for name in _COUNTS}
        return cls(
            layer=scalar(state, "name", "str"), layout=scalar(state, "layout", "str"), channels=channels,
            spatial=tuple(int(v) for v in take(state, "spatial", "int", ndim=1)),
            top=Examples.from_state(unprefixed("top", state)),
            bottom=Examples.from_state(unprefixed("bottom", state)),
            sums=ExactSum.from_state(unprefixed("sums", state)),
            sketch=QuantileSketch.from_state(unprefixed("sketch", state)),
            **counts,
        )


@dataclass(eq=False)
class ScanResult:
    """A scan of listing positions `ranges` by one model over `layers`; see the module docstring."""

    model: str
    weights_digest: str
    listing: str  # fingerprint of the full listing
    input_size: int
    k: int
    ranges: tuple[tuple[int, int], ...]
    scanned: int
    skipped: tuple[SkippedImage, ...]
    image_ids: dict[int, str]
    layers: dict[str, LayerResult]
    format: int = field(default=RESULT_FORMAT)

    # ---- merging ----------------------------------------------------------------------------
    def merge(self, other: "ScanResult") -> "ScanResult":
        """The result of scanning both results' images in one pass."""
        _check_compatible(self, other)
        ranges = _united_ranges(self.ranges, other.ranges)
        layers = {name: self.layers[name].merge(other.layers[name]) for name in self.layers}
        referenced = set()
        for layer in layers.values():
            for part in (layer.top, layer.bottom):
                referenced.update(part.image_index[part.image_index >= 0].tolist())
        ids = {**self.image_ids, **other.image_ids}
        return replace(
            self,
            ranges=ranges,
            scanned=self.scanned + other.scanned,
            skipped=tuple(sorted((*self.skipped, *other.skipped), key=lambda s: s.position)),
            image_ids={p: ids[p] for p in sorted(referenced)},
            layers=layers,
        )

    def equals(self, other: "ScanResult") -> bool:
        """True when both results hold exactly the same data (bit for bit)."""
        if not isinstance(other, ScanResult):
            return False
        plain = ("model", "weights_digest", "listing", "input_size", "k", "ranges", "scanned", "skipped",
                 "image_ids", "format")
        if any(getattr(self, f) != getattr(other, f) for f in plain) or list(self.layers) != list(other.layers):
            return False
        return all(self.layers[n].equals(other.layers[n]) for n in self.layers)

    def layer_only(self, name: str) -> "ScanResult":
        """This result restricted to one layer (image ids: only those its examples name).

        A build saves one such partial per layer and shard, so a per-layer reduce reads and
        merges just that layer: its memory does not grow with the number of layers or shards.
        """
        if name not in self.layers:
            raise MergeError(f"scan result has no layer {name!r}; it has {list(self.layers)}")
        layer = self.layers[name]
        referenced = set()
        for part in (layer.top, layer.bottom):
            referenced.update(part.image_index[part.image_index >= 0].tolist())
        return replace(self, image_ids={p: self.image_ids[p] for p in sorted(referenced)}, layers={name: layer})

    # ---- plain-array state ------------------------------------------------------------------
    def state(self) -> State:
        """Every field as numeric or fixed-width string arrays (savable with np.savez, no pickle)."""
        out: State = {
            "format": np.int64(self.format), "model": np.array(self.model),
            "weights_digest": np.array(self.weights_digest), "listing": np.array(self.listing),
            "input_size": np.int64(self.input_size), "k": np.int64(self.k), "scanned": np.int64(self.scanned),
            "ranges": np.array(self.ranges, dtype=np.int64).reshape(-1, 2),
            "skipped.position": np.array([s.position for s in self.skipped], dtype=np.int64),
            "skipped.image_id": strings(s.image_id for s in self.skipped),
            "skipped.reason": strings(s.reason for s in self.skipped),
            "images.position": np.array(list(self.image_ids), dtype=np.int64),
            "images.id": strings(self.image_ids.values()),
            "layers": strings(self.layers),
        }
        for index, layer in enumerate(self.layers.values()):
            out.update(prefixed(f"layer{index}", layer.state()))
        return out

    @classmethod
    def from_state(cls, state: State) -> "ScanResult":
        """The result saved by `state()`; raises StateError naming the first bad array."""
        version = scalar(state, "format", "int")
        if version != RESULT_FORMAT:
            raise MergeError(f"scan result state has format {version}; this Loupe reads format {RESULT_FORMAT}")
        ranges = take(state, "ranges", "int", ndim=2)
        check_shape("ranges", ranges, (len(ranges), 2))
        skipped_at = take(state, "skipped.position", "int", ndim=1)
        skipped_ids = check_shape("skipped.image_id", take(state, "skipped.image_id", "str", ndim=1), skipped_at.shape)
        reasons = check_shape("skipped.reason", take(state, "skipped.reason", "str", ndim=1), skipped_at.shape)
        image_at = take(state, "images.position", "int", ndim=1)
        image_ids = check_shape("images.id", take(state, "images.id", "str", ndim=1), image_at.shape)
        names = take(state, "layers", "str", ndim=1).tolist()
        layers = {name: LayerResult.from_state(unprefixed(f"layer{i}", state)) for i, name in enumerate(names)}
        return cls(
            model=scalar(state, "model", "str"), weights_digest=scalar(state, "weights_digest", "str"),
            listing=scalar(state, "listing", "str"), input_size=scalar(state, "input_size", "int"),
            k=scalar(state, "k", "int"), ranges=tuple((int(a), int(b)) for a, b in ranges.tolist()),
            scanned=scalar(state, "scanned", "int"),
            skipped=tuple(SkippedImage(int(p), str(i), str(r)) for p, i, r in zip(skipped_at, skipped_ids, reasons)),
            image_ids={int(p): str(i) for p, i in zip(image_at, image_ids)},
            layers=layers, format=version,
        )

    # ---- tables -----------------------------------------------------------------------------
    def units_table(self) -> pa.Table:
        """One row per (layer, unit): counts, activation and max statistics, quantiles of maxima."""
        tables = []
        for name, layer in self.layers.items():
            stats = layer.statistics()
            columns = {"model": [self.model] * layer.channels, "layer": [name] * layer.channels,
                       "unit": np.arange(layer.channels, dtype=np.int32)}
            columns.update(stats)
            tables.append(pa.table(columns))
        return _concat(tables, _UNITS_SCHEMA)

    def examples_table(self) -> pa.Table:
        """One row per filled example slot: model, layer, unit, kind, rank, image, value, y, x, crop box."""
        tables = []
        for name, layer in self.layers.items():
            for kind, part in (("top", layer.top), ("bottom", layer.bottom)):
                unit, rank = np.nonzero(part.filled())
                position = part.position[unit, rank]
                y, x = to_yx(position, layer.spatial)
                box = part.box[unit, rank]
                index = part.image_index[unit, rank]
                tables.append(pa.table({
                    "model": pa.array([self.model] * len(unit), pa.string()),
                    "layer": pa.array([name] * len(unit), pa.string()),
                    "unit": pa.array(unit.astype(np.int32)),
                    "kind": pa.array([kind] * len(unit), pa.string()),
                    "rank": pa.array(rank.astype(np.int16)),
                    "image_index": pa.array(index),
                    "image_id": pa.array([self.image_ids[i] for i in index.tolist()], pa.string()),
                    "value": pa.array(part.values(kind == "bottom")[unit, rank]),
                    "position": pa.array(position),
                    "y": pa.array(y.astype(np.int32)),
                    "x": pa.array(x.astype(np.int32)),
                    "field_y0": pa.array(box[:, 0].astype(np.int32)),
                    "field_x0": pa.array(box[:, 1].astype(np.int32)),
                    "field_y1": pa.array(box[:, 2].astype(np.int32)),
                    "field_x1": pa.array(box[:, 3].astype(np.int32)),
                }))
        return _concat(tables, _EXAMPLES_SCHEMA)

    def skipped_table(self) -> pa.Table:
        return pa.table({
            "image_index": pa.array([s.position for s in self.skipped], pa.int64()),
            "image_id": pa.array([s.image_id for s in self.skipped], pa.string()),
            "reason": pa.array([s.reason for s in self.skipped], pa.string()),
        })

    def sketch_table(self) -> pa.Table:
        """The quantile sketch of per-image maxima as (layer, unit, bucket, count, lower, upper) rows."""
        tables = []
        for name, layer in self.layers.items():
            unit, bucket, count = layer.sketch.rows()
            lower, upper = sketch.bucket_bounds(bucket)
            tables.append(pa.table({
                "model": pa.array([self.model] * len(lower), pa.string()),
                "layer": pa.array([name] * len(lower), pa.string()),
                "unit": pa.array(unit.astype(np.int32)),
                "bucket": pa.array(bucket.astype(np.int32)),
                "count": pa.array(count),
                "lower": pa.array(lower),
                "upper": pa.array(upper),
            }))
        return _concat(tables, _SKETCH_SCHEMA)

    # ---- reporting --------------------------------------------------------------------------
    @property
    def images_covered(self) -> int:
        return sum(b - a for a, b in self.ranges)

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for s in self.skipped:
            reasons[s.reason.split(" (")[0]] = reasons.get(s.reason.split(" (")[0], 0) + 1
        skipped = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) or "none"
        units = sum(layer.channels for layer in self.layers.values())
        return (
            f"{self.model}: scanned {self.scanned} of {self.images_covered} images "
            f"(skipped: {skipped}); {len(self.layers)} layers, {units} units, top/bottom {self.k}"
        )


def merge_results(results: Iterable[ScanResult]) -> ScanResult:
    """Fold any number of shard results (in any order) into one."""
    iterator = iter(results)
    try:
        merged = next(iterator)
    except StopIteration:
        raise MergeError("merge_results needs at least one scan result") from None
    for result in iterator:
        merged = merged.merge(result)
    return merged


# ---- helpers ------------------------------------------------------------------------------------
def _check_compatible(a: ScanResult, b: ScanResult) -> None:
    for name in ("format", "model", "weights_digest", "listing", "input_size", "k"):
        if getattr(a, name) != getattr(b, name):
            raise MergeError(f"cannot merge scan results with different {name}: {getattr(a, name)!r} vs {getattr(b, name)!r}")
    if list(a.layers) != list(b.layers):
        raise MergeError(f"cannot merge scan results of different layers: {list(a.layers)} vs {list(b.layers)}")


def _united_ranges(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    ranges = sorted(r for r in (*a, *b) if r[1] > r[0])
    for (s0, e0), (s1, e1) in zip(ranges, ranges[1:]):
        if s1 < e0:
            raise MergeError(
                f"scan results overlap: images [{s0}, {e0}) and [{s1}, {e1}) were both scanned; "
                "each shard must be merged exactly once"
            )
    united: list[tuple[int, int]] = []
    for start, stop in ranges:
        if united and united[-1][1] == start:
            united[-1] = (united[-1][0], stop)
        else:
            united.append((start, stop))
    return tuple(united)


def _states_equal(a: State, b: State) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    if not tables:
        return schema.empty_table()
    return pa.concat_tables([t.cast(schema) for t in tables])


_UNITS_SCHEMA = pa.schema(
    [("model", pa.string()), ("layer", pa.string()), ("unit", pa.int32()), ("images", pa.int64()),
     ("nonfinite_images", pa.int64()), ("act_mean", pa.float64()), ("act_std", pa.float64()),
     ("max_mean", pa.float64()), ("max_std", pa.float64()),
     ("max_min", pa.float64()), ("max_max", pa.float64()), ("max_frac_positive", pa.float64())]
    + [(f"max_p{round(q * 100):02d}", pa.float64()) for q in QUANTILES]
)
_EXAMPLES_SCHEMA = pa.schema(
    [("model", pa.string()), ("layer", pa.string()), ("unit", pa.int32()), ("kind", pa.string()),
     ("rank", pa.int16()), ("image_index", pa.int64()), ("image_id", pa.string()), ("value", pa.float32()),
     ("position", pa.int64()), ("y", pa.int32()), ("x", pa.int32()), ("field_y0", pa.int32()),
     ("field_x0", pa.int32()), ("field_y1", pa.int32()), ("field_x1", pa.int32())]
)
_SKETCH_SCHEMA = pa.schema(
    [("model", pa.string()), ("layer", pa.string()), ("unit", pa.int32()), ("bucket", pa.int32()),
     ("count", pa.int64()), ("lower", pa.float64()), ("upper", pa.float64())]
)
