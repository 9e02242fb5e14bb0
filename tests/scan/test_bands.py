"""Band samples and histograms: equal to a brute-force loop, the same for any sharding and merge
order, uniform within a band, seeded, and refused when malformed."""

from __future__ import annotations

import numpy as np
import pytest

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.scan import BandSampler, BandSettings, ValueHistogram, band_thresholds, image_priority
from loupe.pipeline.scan.state import StateError

UNITS, IMAGES, PER_BAND = 4, 2000, 3


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    values = rng.gamma(2.0, 1.0, size=(IMAGES, UNITS)) - 1.0
    values[rng.choice(IMAGES, 40, replace=False)] = np.nan  # skipped images
    values[:, 3] = np.round(values[:, 3], 1)  # many ties in one unit
    ranks = rng.permutation(IMAGES).astype(np.int64)
    finite = values[~np.isnan(values).any(axis=1)]
    edges = band_thresholds(np.quantile(finite, [0, 0.25, 0.5, 0.9, 1.0], axis=0).T,
                            np.nanmin(values, axis=0), np.nanmax(values, axis=0))
    return values, ranks, edges


def one_pass(values, ranks, edges, seed=0) -> BandSampler:
    sampler = BandSampler(edges, PER_BAND, seed)
    sampler.add(values, np.arange(len(values)), ranks)
    return sampler


def test_samples_are_the_smallest_priorities_in_each_band():
    values, ranks, edges = data()
    result = one_pass(values, ranks, edges, seed=5).result()
    priority = image_priority(ranks, 5)
    bands = edges.shape[1] - 1
    for unit in range(UNITS):
        for band in range(bands):
            low, high = edges[unit, band], edges[unit, band + 1]
            inside = [i for i in range(IMAGES) if not np.isnan(values[i, unit]) and low <= values[i, unit]
                      and (values[i, unit] < high or (band == bands - 1 and values[i, unit] == high))]
            expected = sorted(inside, key=lambda i: (int(priority[i]), int(ranks[i])))[:PER_BAND]
            mask = (result.unit == unit) & (result.band == band)
            assert result.image_index[mask].tolist() == expected
            assert result.band_count[unit, band] == len(inside)
            assert np.all((result.value[mask] >= low) & (result.value[mask] <= high))
    assert result.band_count.sum(axis=1).tolist() == [IMAGES - 40] * UNITS


def test_any_sharding_and_merge_order_gives_the_same_samples():
    values, ranks, edges = data()
    expected = one_pass(values, ranks, edges).result()
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(np.arange(1, IMAGES), 6, replace=False))
    shards = []
    for start, stop in zip([0, *cuts], [*cuts, IMAGES]):
        shard = BandSampler(edges, PER_BAND, 0)
        shard.add(values[start:stop], np.arange(start, stop), ranks[start:stop])
        shards.append(BandSampler.from_state(shard.state()))
    order = rng.permutation(len(shards))
    merged = shards[order[0]]
    for index in order[1:]:
        merged = shards[index].merge(merged) if index % 2 else merged.merge(shards[index])
    got = merged.result()
    for name in ("unit", "band", "slot", "image_index", "value", "band_count"):
        assert np.array_equal(getattr(got, name), getattr(expected, name), equal_nan=True), name


def test_seeded_and_uniform_within_a_band():
    values = np.zeros((40, 1))
    edges = np.array([[0.0, 1.0]])
    picks = np.zeros(40)
    for seed in range(400):
        result = one_pass(values, np.arange(40), edges, seed=seed).result()
        picks[result.image_index] += 1
    assert picks.sum() == 400 * PER_BAND
    assert picks.min() > 0.5 * picks.mean() and picks.max() < 1.6 * picks.mean()
    again = one_pass(values, np.arange(40), edges, seed=7).result().image_index
    assert np.array_equal(again, one_pass(values, np.arange(40), edges, seed=7).result().image_index)
    assert not np.array_equal(again, one_pass(values, np.arange(40), edges, seed=8).result().image_index)


def test_histogram_matches_numpy_and_merges():
    values, _, _ = data()
    low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
    whole = ValueHistogram(low, high, 7)
    whole.add(values)
    parts = [ValueHistogram(low, high, 7) for _ in range(3)]
    for part, rows in zip(parts, np.array_split(values, 3)):
        part.add(rows)
    merged = ValueHistogram.from_state(parts[2].state()).merge(parts[0]).merge(parts[1])
    for unit in range(UNITS):
        column = values[:, unit][~np.isnan(values[:, unit])]
        assert whole.result()[unit].tolist() == np.histogram(column, 7, (low[unit], high[unit]))[0].tolist()
    assert np.array_equal(merged.result(), whole.result())
    table = whole.to_table()
    assert table.num_rows == UNITS * 7 and sum(table.column("count").to_pylist()) == (IMAGES - 40) * UNITS
    constant = ValueHistogram(np.array([2.0]), np.array([2.0]), 4)
    constant.add(np.full((5, 1), 2.0))
    assert constant.result().tolist() == [[5, 0, 0, 0]]


def test_bad_settings_and_states_are_refused():
    with pytest.raises(LoupeError, match="quantiles"):
        BandSettings(quantiles=(0.0, 0.5, 0.4, 1.0))
    with pytest.raises(LoupeError, match="samples_per_band"):
        BandSettings(samples_per_band=0)
    values, ranks, edges = data()
    state = one_pass(values, ranks, edges).state()
    state["priority"] = state["priority"][:, :1]
    with pytest.raises(StateError, match="priority"):
        BandSampler.from_state(state)
    with pytest.raises(LoupeError, match="different"):
        BandSampler(edges, PER_BAND, 0).merge(BandSampler(edges, PER_BAND, 1))
