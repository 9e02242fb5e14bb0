"""The streaming scan equals a brute-force computation over all materialized activations, and
merging shard results in any order equals the single pass, bit for bit."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch

from loupe.pipeline.data import LoaderOptions, iter_batches, list_images
from loupe.pipeline.models import capture
from loupe.pipeline.scan import (
    Examples, ExactSum, LayerResult, MergeError, QuantileSketch, ScanOptions, ScanResult, Scanner, StateError, TopK,
    merge_results, scan_dataset,
)

from .helpers import LAYERS, png_bytes, random_images, tiny_model, write_folder

SIZE = 10
BATCH = 32
K = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """260 images: 240 random ones plus 20 exact duplicates under other names (ties by value)."""
    arrays = random_images(240, SIZE, seed=1)
    files = {f"img_{i:03d}.png": png_bytes(a) for i, a in enumerate(arrays)}
    files.update({f"dup_{i:02d}.png": png_bytes(arrays[i * 7]) for i in range(20)})
    folder = write_folder(tmp_path_factory.mktemp("exact"), files)
    return list_images(str(folder))


@pytest.fixture(scope="module")
def model():
    return tiny_model(SIZE)


@pytest.fixture(scope="module")
def scanner(model):
    return Scanner(model, LAYERS, ScanOptions(k=K))


@pytest.fixture(scope="module")
def single_pass(scanner, dataset, model):
    return scan_dataset(model, dataset, scanner, loader=LoaderOptions(images_per_batch=BATCH, workers=0))


def brute_force(model, listing):
    """Every activation of every image, read with capture (no scan code involved)."""
    acts = {name: [] for name in LAYERS}
    positions = []
    with capture(model, LAYERS) as cap, torch.no_grad():
        for batch in iter_batches(listing, SIZE, SIZE, options=LoaderOptions(images_per_batch=BATCH, workers=0)):
            values = cap.run(batch.images.float() / 255)
            for name in LAYERS:
                acts[name].append(values[name].flatten(2).numpy())
            positions.append(batch.positions)
    return {n: np.concatenate(v) for n, v in acts.items()}, np.concatenate(positions)


def expected_extremes(maxima: np.ndarray, ranks: np.ndarray, k: int, bottom: bool) -> np.ndarray:
    """Indices of the k best images: by value (desc for top, asc for bottom), ties by smaller id rank."""
    order = np.lexsort((ranks, maxima if bottom else -maxima))
    return order[:k]


def test_top_and_bottom_equal_brute_force_for_every_unit(model, dataset, single_pass):
    acts, positions = brute_force(model, dataset)
    ranks = dataset.keys[positions - dataset.start]
    ids = dataset.ids()
    ties_seen = 0
    for name in LAYERS:
        layer = single_pass.layers[name]
        values = acts[name]  # (N, C, P) float32
        assert values.shape[1] == layer.channels
        for unit in range(layer.channels):
            maxima = values[:, unit].max(axis=1)
            argmax = values[:, unit].argmax(axis=1)  # numpy: first occurrence
            ties_seen += len(maxima) - len(np.unique(maxima))
            for kind, part in (("top", layer.top), ("bottom", layer.bottom)):
                best = expected_extremes(maxima, ranks, K, bottom=kind == "bottom")
                assert part.image_index[unit].tolist() == positions[best].tolist(), (name, unit, kind)
                assert np.array_equal(part.values(kind == "bottom")[unit], maxima[best]), (name, unit, kind)
                assert part.position[unit].tolist() == argmax[best].tolist(), (name, unit, kind)
                assert [single_pass.image_ids[p] for p in positions[best].tolist()] == [ids[p] for p in best]
    assert ties_seen > 1000, "the data set must exercise tie-breaking"


def test_statistics_equal_brute_force(model, dataset, single_pass):
    acts, _ = brute_force(model, dataset)
    for name in LAYERS:
        stats = single_pass.layers[name].statistics()
        values = acts[name].astype(np.float64)
        maxima = values.max(axis=2)
        assert (stats["images"] == len(dataset)).all()
        np.testing.assert_allclose(stats["act_mean"], values.mean(axis=(0, 2)), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(stats["act_std"], values.transpose(1, 0, 2).reshape(values.shape[1], -1).std(axis=1),
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(stats["max_mean"], maxima.mean(axis=0), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(stats["max_std"], maxima.std(axis=0), rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(stats["max_min"], maxima.min(axis=0).astype(np.float32))
        np.testing.assert_array_equal(stats["max_max"], maxima.max(axis=0).astype(np.float32))
        np.testing.assert_array_equal(stats["max_frac_positive"], (maxima > 0).mean(axis=0))
        for q in (0.05, 0.5, 0.95):
            ordered = np.sort(maxima, axis=0)
            rank = q * (len(maxima) - 1)
            lo, hi = ordered[int(np.floor(rank))], ordered[int(np.ceil(rank))]
            got = stats[f"max_p{round(q * 100):02d}"]
            slack = 0.011 * np.maximum(np.abs(lo), np.abs(hi)) + 1e-6
            assert ((got >= lo - slack) & (got <= hi + slack)).all(), (name, q, got, lo, hi)


def test_finding_positions_for_all_images_or_only_candidates_gives_the_same_result(model, dataset, single_pass):
    everywhere = scan_dataset(model, dataset, LAYERS, options=ScanOptions(k=K, position_search="all"),
                              loader=LoaderOptions(images_per_batch=BATCH, workers=0))
    assert everywhere.equals(single_pass)


def test_merging_shards_in_any_order_equals_the_single_pass(scanner, model, dataset, single_pass):
    shards = dataset.shards(4, align=BATCH)
    assert [len(s) for s in shards] and sum(len(s) for s in shards) == len(dataset)
    results = [scan_dataset(model, s, scanner, loader=LoaderOptions(images_per_batch=BATCH, workers=0)) for s in shards]
    for order in itertools.permutations(range(4)):
        assert merge_results(results[i] for i in order).equals(single_pass), order
    a, b, c, d = results
    assert a.merge(b).merge(c.merge(d)).equals(single_pass)
    assert d.merge(a.merge(c)).merge(b).equals(single_pass)


def test_one_layer_of_each_shard_merges_into_that_layer_of_the_single_pass(scanner, model, dataset, single_pass):
    """What a per-layer reduce does: merge only one layer's partials, read back from their plain state."""
    shards = dataset.shards(3, align=BATCH)
    results = [scan_dataset(model, s, scanner, loader=LoaderOptions(images_per_batch=BATCH, workers=0)) for s in shards]
    for name in LAYERS:
        parts = [ScanResult.from_state(r.layer_only(name).state()) for r in results]
        assert all(list(p.layers) == [name] for p in parts)
        merged = merge_results(reversed(parts))
        assert merged.equals(single_pass.layer_only(name)), name
        expected = single_pass.examples_table()
        expected = expected.filter(expected.column("layer").to_numpy(zero_copy_only=False) == name)
        assert merged.examples_table().equals(expected) and merged.examples_table().num_rows > 0
        units = single_pass.units_table()
        assert merged.units_table().equals(units.filter(units.column("layer").to_numpy(zero_copy_only=False) == name))
        referenced = set(merged.layers[name].top.image_index.ravel()) | set(merged.layers[name].bottom.image_index.ravel())
        assert set(merged.image_ids) == referenced - {-1}  # only the ids this layer's examples name
    with pytest.raises(MergeError, match="no layer 'nope'"):
        single_pass.layer_only("nope")


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) and a[n].dtype == b[n].dtype for n in a)


def test_each_statistic_merged_from_its_plain_state_equals_the_direct_merge(scanner, model, dataset, single_pass):
    first, second = (scan_dataset(model, s, scanner, loader=LoaderOptions(images_per_batch=BATCH, workers=0))
                     for s in dataset.shards(2, align=BATCH))

    def via_state(cls, a, b):
        return cls.from_state(_from_npz(_npz(a.state()))).merge(cls.from_state(_from_npz(_npz(b.state()))))

    for name in LAYERS:
        a, b = first.layers[name], second.layers[name]
        for part in ("top", "bottom"):
            assert via_state(Examples, getattr(a, part), getattr(b, part)).equals(getattr(a, part).merge(getattr(b, part)))
        for cls, field in ((ExactSum, "sums"), (QuantileSketch, "sketch")):
            direct = getattr(a, field).merge(getattr(b, field))
            assert _same_state(via_state(cls, getattr(a, field), getattr(b, field)).state(), direct.state()), (name, field)
            assert _same_state(direct.state(), getattr(single_pass.layers[name], field).state()), (name, field)
        assert via_state(LayerResult, a, b).equals(a.merge(b))
        assert a.merge(b).equals(single_pass.layers[name])
    assert via_state(ScanResult, second, first).equals(single_pass)
    broken = first.state()
    del broken["layer1.top.keys"]
    with pytest.raises(StateError, match="no array 'keys'"):
        ScanResult.from_state(broken)
    broken = {**first.state(), "layer0.sums.limbs": first.state()["layer0.sums.limbs"].astype(np.float64)}
    with pytest.raises(StateError, match="'limbs' must hold int values"):
        ScanResult.from_state(broken)


def test_topk_added_in_parts_and_merged_from_plain_state_equals_one_topk():
    rng = np.random.default_rng(3)
    units, images, k = 5, 40, 4
    values = rng.permutation(units * images * 4)[: units * images].reshape(units, images).astype(np.int64)
    image = torch.arange(images, dtype=torch.int64)
    where = torch.from_numpy(rng.integers(0, 9, (units, images)))
    keys = torch.from_numpy(values)
    whole = TopK.empty(units, k)
    whole.add(keys, image, where)
    first, second = TopK.empty(units, k), TopK.empty(units, k)
    first.add(keys[:, :25], image[:25], where[:, :25])
    second.add(keys[:, 25:], image[25:], where[:, 25:])
    via = TopK.from_state(_from_npz(_npz(second.state()))).merge(TopK.from_state(_from_npz(_npz(first.state()))))
    assert _same_state(via.state(), first.merge(second).state())
    assert _same_state(via.state(), whole.state())
    best = np.argsort(-values, axis=1)[:, :k]
    assert np.array_equal(via.state()["keys"], np.take_along_axis(values, best, axis=1))
    assert np.array_equal(via.state()["image"], best)


def test_shards_not_aligned_to_batches_still_merge_exactly(scanner, model, dataset, single_pass):
    """Short batches are padded to the batch shape, so activations never depend on shard boundaries."""
    shards = [dataset.slice(0, 45), dataset.slice(45, 46), dataset.slice(46, 200), dataset.slice(200, len(dataset))]
    results = [scan_dataset(model, s, scanner, loader=LoaderOptions(images_per_batch=BATCH, workers=0)) for s in shards]
    assert merge_results(reversed(results)).equals(single_pass)


def _npz(state: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **state)
    return buffer.getvalue()


def _from_npz(blob: bytes) -> dict:
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def test_results_are_compact_plain_arrays_and_guard_against_double_merges(scanner, model, dataset, single_pass):
    state = single_pass.state()
    assert all(value.dtype.kind in "biufU" for value in state.values()), "no object arrays: nothing to unpickle"
    blob = _npz(state)
    assert ScanResult.from_state(_from_npz(blob)).equals(single_pass)
    assert len(blob) < 80_000
    first = scan_dataset(model, dataset.shard(2, 0, align=BATCH), scanner,
                         loader=LoaderOptions(images_per_batch=BATCH, workers=0))
    with pytest.raises(MergeError, match="overlap"):
        first.merge(first)
    other = tiny_model(SIZE, seed=1)
    with pytest.raises(MergeError, match="weights_digest"):
        first.merge(scan_dataset(other, dataset.shard(2, 1, align=BATCH), LAYERS, options=ScanOptions(k=K),
                                 loader=LoaderOptions(images_per_batch=BATCH, workers=0)))


def test_arrow_tables_hold_every_example_and_unit(single_pass):
    units = single_pass.units_table()
    assert units.num_rows == sum(layer.channels for layer in single_pass.layers.values())
    examples = single_pass.examples_table()
    assert examples.num_rows == units.num_rows * K * 2
    rows = examples.filter(examples.column("layer").to_numpy(zero_copy_only=False) == "conv1").to_pylist()
    first = next(r for r in rows if r["unit"] == 2 and r["kind"] == "top" and r["rank"] == 0)
    layer = single_pass.layers["conv1"]
    assert first["value"] == layer.top.values(False)[2, 0]
    assert (first["y"], first["x"]) == divmod(int(layer.top.position[2, 0]), SIZE)
    assert first["field_y0"] <= first["y"] < first["field_y1"] and first["field_x0"] <= first["x"] < first["field_x1"]
    assert first["image_id"] == single_pass.image_ids[first["image_index"]]


class Tokens(torch.nn.Module):
    """2x2 patches -> 25 tokens -> linear: a channels-last (NLC) layer like a vision transformer's."""

    def __init__(self):
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 4, 2, stride=2)
        self.proj = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.proj(self.patch(x).flatten(2).transpose(1, 2))


def test_token_layers_scan_exactly_with_per_token_boxes(dataset):
    torch.manual_seed(0)
    from loupe.pipeline.models import LoadedModel, Preprocessing

    model = LoadedModel.from_module(Tokens(), preprocessing=Preprocessing(input_size=SIZE, resize_size=SIZE),
                                    device="cpu")
    assert model.catalog["proj"].layout == "NLC"
    result = scan_dataset(model, dataset, ["proj"], options=ScanOptions(k=K),
                          loader=LoaderOptions(images_per_batch=BATCH, workers=0))
    values, positions = [], []
    with capture(model, ["proj"]) as cap, torch.no_grad():
        for batch in iter_batches(dataset, SIZE, SIZE, options=LoaderOptions(images_per_batch=BATCH, workers=0)):
            values.append(cap.run(batch.images.float() / 255)["proj"].numpy())
            positions.append(batch.positions)
    tokens, positions = np.concatenate(values), np.concatenate(positions)  # (N, 25, 3)
    layer = result.layers["proj"]
    for unit in range(3):
        maxima = tokens[:, :, unit].max(axis=1)
        best = expected_extremes(maxima, dataset.keys, K, bottom=False)
        assert layer.top.image_index[unit].tolist() == positions[best].tolist()
        token = tokens[best, :, unit].argmax(axis=1)
        assert layer.top.position[unit].tolist() == token.tolist()
        rows, cols = token // 5, token % 5
        expected_boxes = np.stack([2 * rows, 2 * cols, 2 * rows + 2, 2 * cols + 2], axis=1)
        assert np.array_equal(layer.top.box[unit], expected_boxes)
