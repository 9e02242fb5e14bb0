"""Band samples and histograms: equal to a brute-force loop, the same for any sharding and merge
order, uniform within a band, seeded, and refused when malformed."""

from __future__ import annotations

import numpy as np
import pytest

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.scan import BandSampler, BandSettings, ValueHistogram, band_thresholds, image_priority
from loupe.pipeline.scan.state import StateError

IMAGES, PER_BAND, SKIPPED = 2000, 3, 40
QUANTILES = (0.0, 0.25, 0.5, 0.9, 1.0)
MASK = 2**64 - 1


def splitmix(rank: int, seed: int) -> int:
    """splitmix64's finalizer of rank + (seed + 1) * golden, in plain Python integers."""
    z = (rank + (seed + 1) * 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def data(seed: int = 0):
    """float32 maxima of 5 units (skewed, normal, many ties, mostly zero, never finite), ranks, band edges."""
    rng = np.random.default_rng(seed)
    values = np.stack([rng.gamma(2.0, 1.0, IMAGES) - 1.0, rng.normal(0, 3, IMAGES),
                       np.round(rng.normal(0, 1, IMAGES), 1), np.where(rng.random(IMAGES) < 0.6, 0.0, rng.integers(1, 5, IMAGES) * 0.5),
                       np.full(IMAGES, np.nan)], axis=1).astype(np.float32)
    values[rng.choice(IMAGES, SKIPPED, replace=False)] = np.nan  # skipped images
    ranks = rng.permutation(IMAGES).astype(np.int64)
    quantiles = np.full((values.shape[1], len(QUANTILES)), np.nan)
    low, high = np.full(values.shape[1], np.nan), np.full(values.shape[1], np.nan)
    for unit in range(values.shape[1]):
        column = values[:, unit][~np.isnan(values[:, unit])].astype(np.float64)
        if len(column):  # edges on data values, so some values sit exactly on an edge
            quantiles[unit] = np.quantile(column, QUANTILES, method="inverted_cdf")
            low[unit], high[unit] = column.min(), column.max()
    return values, ranks, band_thresholds(quantiles, low, high)


def one_pass(values, ranks, edges, seed=0) -> BandSampler:
    sampler = BandSampler(edges, PER_BAND, seed)
    sampler.add(values, np.arange(len(values)), ranks)
    return sampler


def in_band(value: float, edges: np.ndarray, band: int) -> bool:
    low, high = float(edges[band]), float(edges[band + 1])
    last = band == len(edges) - 2
    return not np.isnan(value) and low <= value and (value < high or (last and value == high))


def assert_same(got, expected) -> None:
    for name in ("unit", "band", "slot", "image_index", "value", "band_low", "band_high", "band_count"):
        a, b = getattr(got, name), getattr(expected, name)
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), name


def assert_same_state(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name].dtype == expected[name].dtype and got[name].tobytes() == expected[name].tobytes(), name


def test_priority_is_splitmix64_of_the_rank():
    ranks = np.array([0, 1, 2, 17, 2**40, 2**62], dtype=np.int64)
    for seed in (0, 1, 12345, 2**63 - 1):
        assert image_priority(ranks, seed).tolist() == [splitmix(int(r), seed) for r in ranks]
    assert len(set(image_priority(np.arange(100_000), 3).tolist())) == 100_000


def test_thresholds_are_exact_outside_clipped_and_non_decreasing():
    quantiles = np.array([[9.0, 0.5, 0.2, 3.0, 9.0], [0.0, 1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
    edges = band_thresholds(quantiles, np.array([0.0, 0.5, np.nan]), np.array([2.0, 3.5, np.nan]))
    assert edges[0].tolist() == [0.0, 0.5, 0.5, 2.0, 2.0]
    assert edges[1].tolist() == [0.5, 1.0, 2.0, 3.0, 3.5]
    assert np.isnan(edges[2]).all()  # a unit without values has no bands
    with pytest.raises(LoupeError, match="unit 1"):
        band_thresholds(quantiles, np.array([0.0, 5.0, 0.0]), np.array([1.0, 4.0, 1.0]))


def test_samples_are_the_smallest_priorities_in_each_band():
    values, ranks, edges = data()
    result = one_pass(values, ranks, edges, seed=5).result()
    order = np.lexsort((result.slot, result.band, result.unit))
    assert np.array_equal(order, np.arange(len(order)))  # sorted by (unit, band, slot)
    units, bands = edges.shape[0], edges.shape[1] - 1
    for unit in range(units):
        for band in range(bands):
            inside = [i for i in range(IMAGES) if in_band(float(values[i, unit]), edges[unit], band)]
            expected = sorted(inside, key=lambda i: (splitmix(int(ranks[i]), 5), int(ranks[i])))[:PER_BAND]
            mask = (result.unit == unit) & (result.band == band)
            assert result.image_index[mask].tolist() == expected
            assert result.slot[mask].tolist() == list(range(len(expected)))
            assert result.value[mask].tolist() == values[expected, unit].tolist()
            assert all(in_band(float(v), edges[unit], band) for v in result.value[mask])
            assert np.all(result.band_low[mask] == edges[unit, band]) and np.all(result.band_high[mask] == edges[unit, band + 1])
            assert result.band_count[unit, band] == len(inside)
    assert result.band_count.sum(axis=1).tolist() == [IMAGES - SKIPPED] * 4 + [0]
    assert result.band_count[3, :2].tolist() == [0, 0]  # equal edges: empty bands, no sample
    table = one_pass(values, ranks, edges, seed=5).result().to_table()
    assert [(f.name, str(f.type)) for f in table.schema] == [
        ("unit", "int32"), ("band", "int16"), ("slot", "int16"), ("image_index", "int64"), ("value", "float"),
        ("band_low", "double"), ("band_high", "double")]
    assert table.num_rows == len(result.unit)


def test_any_sharding_and_merge_order_gives_the_same_samples():
    values, ranks, edges = data(1)
    whole = one_pass(values, ranks, edges)
    expected = whole.result()
    rng = np.random.default_rng(2)
    for _ in range(3):
        cuts = np.sort(rng.choice(np.arange(1, IMAGES), rng.integers(1, 12), replace=False))
        ranges = list(zip([0, *cuts], [*cuts, IMAGES]))
        single = BandSampler(edges, PER_BAND, 0)  # one sampler, shards added in random order
        for index in rng.permutation(len(ranges)):
            start, stop = ranges[index]
            single.add(values[start:stop], np.arange(start, stop), ranks[start:stop])
        assert_same(single.result(), expected)
        parts = []  # one sampler per shard, saved and loaded, merged in a random tree
        for start, stop in ranges:
            shard = BandSampler(edges, PER_BAND, 0)
            shard.add(values[start:stop], np.arange(start, stop), ranks[start:stop])
            loaded = BandSampler.from_state(shard.state())
            assert_same_state(loaded.state(), shard.state())
            parts.append(loaded)
        while len(parts) > 1:
            a, b = sorted(rng.choice(len(parts), 2, replace=False))
            parts.append(parts.pop(b).merge(parts.pop(a)))
        assert_same(parts[0].result(), expected)
        assert_same_state(parts[0].state(), whole.state())


def test_seed_decides_the_sample():
    values, ranks, edges = data()
    same = one_pass(values, ranks, edges, seed=7).result()
    assert_same(one_pass(values, ranks, edges, seed=7).result(), same)
    other = one_pass(values, ranks, edges, seed=8).result()
    assert not np.array_equal(other.image_index, same.image_index)
    assert np.array_equal(other.band_count, same.band_count)


def test_every_image_of_a_band_is_equally_likely():
    values = np.arange(60, dtype=np.float32)[:, None]
    edges = np.array([[0.0, 20.0, 45.0, 59.0]])  # band 1: the 25 images 20..44
    picks, seeds = np.zeros(60), 800
    for seed in range(seeds):
        result = one_pass(values, np.arange(100, 160), edges, seed=seed).result()
        picks[result.image_index[result.band == 1]] += 1
    assert picks[:20].sum() == 0 and picks[45:].sum() == 0 and picks.sum() == seeds * PER_BAND
    inside = picks[20:45]
    expected = seeds * PER_BAND / 25
    chi_square = ((inside - expected) ** 2 / expected).sum()
    assert chi_square < 24 + 6 * np.sqrt(48)  # 24 degrees of freedom; far beyond any fixed-seed fluke


def histogram_of(values, low, high, bins) -> ValueHistogram:
    histogram = ValueHistogram(low, high, bins)
    histogram.add(values)
    return histogram


def test_histogram_matches_numpy_for_any_sharding():
    values, _, _ = data(3)
    grid = np.random.default_rng(5).integers(0, 33, IMAGES).astype(np.float32) / 4  # every value on an edge
    values = np.concatenate([values, grid[:, None]], axis=1)
    finite = [values[:, unit][~np.isnan(values[:, unit])].astype(np.float64) for unit in range(6)]
    low = np.array([c.min() if len(c) else np.nan for c in finite])
    high = np.array([c.max() if len(c) else np.nan for c in finite])
    whole = histogram_of(values, low, high, 32)
    edges = whole.edges()
    for unit in (0, 1, 2, 3, 5):
        counts, numpy_edges = np.histogram(finite[unit], 32, (low[unit], high[unit]))
        assert whole.result()[unit].tolist() == counts.tolist()
        assert edges[unit].tobytes() == numpy_edges.tobytes()
    assert whole.result()[4].sum() == 0
    rng = np.random.default_rng(4)
    parts = [histogram_of(rows, low, high, 32) for rows in np.array_split(values, 5)]
    parts = [ValueHistogram.from_state(part.state()) for part in parts]
    while len(parts) > 1:
        a, b = sorted(rng.choice(len(parts), 2, replace=False))
        parts.append(parts.pop(b).merge(parts.pop(a)))
    assert np.array_equal(parts[0].result(), whole.result())
    assert_same_state(ValueHistogram.from_state(whole.state()).state(), whole.state())
    table = whole.to_table()
    assert [(f.name, str(f.type)) for f in table.schema] == [
        ("unit", "int32"), ("bin", "int16"), ("lower", "double"), ("upper", "double"), ("count", "int64")]
    assert table.num_rows == 6 * 32 and table.column("count").to_pylist() == whole.result().ravel().tolist()
    assert table.column("lower").to_pylist()[32:64] == edges[1, :-1].tolist()


def test_values_a_hair_from_an_edge_land_on_its_correct_side():
    edges = np.linspace(0.0, 1.0, 11)
    values = np.concatenate([edges, np.nextafter(edges, -np.inf)[1:], np.nextafter(edges, np.inf)[:-1]])
    histogram = histogram_of(values[:, None], np.array([0.0]), np.array([1.0]), 10)
    assert histogram.result()[0].tolist() == np.histogram(values, 10, (0.0, 1.0))[0].tolist()
    assert histogram.result()[0].tolist() == [int(((values >= a) & ((values < b) | (b == 1.0) & (values == b))).sum())
                                               for a, b in zip(edges[:-1], edges[1:])]


def test_constant_unit_counts_in_one_bin():
    constant = histogram_of(np.array([[2.0], [2.0], [np.nan], [2.0]], np.float32), np.array([2.0]), np.array([2.0]), 4)
    assert constant.result().tolist() == [[3, 0, 0, 0]]
    assert constant.edges().tolist() == [[2.0] * 5]


def test_bad_settings_are_refused_naming_the_field():
    for quantiles in [(0.0, 0.5, 0.4, 1.0), (0.1, 1.0), (0.0, 0.9), (0.0,), (0.0, float("nan"), 1.0), ("a", 1.0)]:
        with pytest.raises(LoupeError, match="scan.bands.quantiles"):
            BandSettings(quantiles=quantiles)
    for field, bad in [("samples_per_band", 0), ("samples_per_band", True), ("samples_per_band", 1.5),
                       ("histogram_bins", 0), ("seed", -1), ("seed", 2**64)]:
        with pytest.raises(LoupeError, match=f"scan.bands.{field}"):
            BandSettings(**{field: bad})
    assert BandSettings(quantiles=[0, 0.5, 1]).quantiles == (0.0, 0.5, 1.0)
    with pytest.raises(LoupeError, match="unit 1"):
        BandSampler(np.array([[0.0, 1.0], [1.0, 0.0]]), 2, 0)
    sampler = BandSampler(np.array([[0.0, 1.0]]), 2, 0)
    with pytest.raises(LoupeError, match="ranks"):
        sampler.add(np.zeros((2, 1)), np.arange(2), np.array([0, -1]))
    with pytest.raises(LoupeError, match=r"\[images, 1\]"):
        sampler.add(np.zeros((2, 2)), np.arange(2), np.arange(2))


def test_malformed_states_are_refused_naming_the_array():
    values, ranks, edges = data()
    good = one_pass(values, ranks, edges).state()
    broken = {
        "priority": lambda s: s.update(priority=s["priority"][:, :1]),
        "rank": lambda s: s.update(rank=s["rank"].astype(np.float64)),
        "'priority' does not match": lambda s: s["priority"].__setitem__((0, 0, 0), 5),
        "count": lambda s: s["count"].__setitem__((0, 0), 0),
        "image": lambda s: s.pop("image"),
        "samples_per_band": lambda s: s.update(samples_per_band=np.int64(0)),
    }
    for name, damage in broken.items():
        state = {key: value.copy() for key, value in good.items()}
        damage(state)
        with pytest.raises(StateError, match=name):
            BandSampler.from_state(state)
    with pytest.raises(LoupeError, match="different"):
        BandSampler(edges, PER_BAND, 0).merge(BandSampler(edges, PER_BAND, 1))
    histogram = histogram_of(values[:, :4], np.full(4, -20.0), np.full(4, 20.0), 8).state()
    for name, damage in {"counts": lambda s: s["counts"].__setitem__((0, 0), -1),
                         "bins": lambda s: s.update(bins=np.float64(8.0))}.items():
        state = {key: value.copy() for key, value in histogram.items()}
        damage(state)
        with pytest.raises(StateError, match=name):
            ValueHistogram.from_state(state)
