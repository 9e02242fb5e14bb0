"""Scans in any basis: one-hot directions give exactly the channels' results, an SAE latent that
copies a channel reproduces that channel's top-k, and bad basis files are refused, naming them."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from loupe.pipeline.data import LoaderOptions, list_images
from loupe.pipeline.models.basis import Basis, BasisError, load_basis
from loupe.pipeline.scan import ScanOptions, Scanner, scan_dataset

from tests.scan.helpers import png_bytes, random_images, tiny_model, write_folder

LOADER = LoaderOptions(images_per_batch=4, workers=0)


@pytest.fixture
def listing(tmp_path):
    files = {f"img{i:02d}.png": png_bytes(a) for i, a in enumerate(random_images(11, 10, seed=5))}
    return list_images(str(write_folder(tmp_path / "images", files)))


def scan(model, listing, bases=None, layers=("conv1",)):
    scanner = Scanner(model, list(layers), ScanOptions(k=3, pooled=False), bases=bases)
    return scan_dataset(model, listing, scanner, loader=LOADER)


def test_one_hot_directions_are_exactly_the_channels(listing):
    model = tiny_model(input_size=10)
    picked = [4, 1, 2]
    basis = Basis("conv1", torch.eye(6)[picked])
    channels = scan(model, listing).layers["conv1"]
    directions = scan(model, listing, {"conv1": basis}).layers["conv1"]
    assert directions.channels == 3
    for unit, channel in enumerate(picked):
        for part in ("top", "bottom"):
            a, b = getattr(directions, part), getattr(channels, part)
            assert np.array_equal(a.keys[unit], b.keys[channel])
            assert np.array_equal(a.image_index[unit], b.image_index[channel])
            assert np.array_equal(a.position[unit], b.position[channel])
        assert np.array_equal(directions.sums.state()["limbs"][:, unit], channels.sums.state()["limbs"][:, channel])


def test_an_sae_latent_that_copies_a_channel_reproduces_its_top_k(listing):
    model = tiny_model(input_size=10)
    encoder = torch.zeros(4, 6)
    encoder[2, 5] = 1.0  # latent 2 = relu(channel 5)
    sae = Basis("conv1", directions=torch.randn(4, 6), encoder=encoder, encoder_bias=torch.zeros(4),
                decoder_bias=torch.zeros(6), activation="relu")
    channel = scan(model, listing).layers["conv1"]
    latent = scan(model, listing, {"conv1": sae}).layers["conv1"]
    positive = channel.top.values(bottom=False)[5] > 0
    assert positive.any()
    assert np.array_equal(latent.top.image_index[2][positive], channel.top.image_index[5][positive])
    assert np.array_equal(latent.top.values(bottom=False)[2][positive], channel.top.values(bottom=False)[5][positive])
    assert (latent.top.values(bottom=False)[[0, 1, 3]] == 0).all(), "latents with zero encoders never fire"


def test_sae_activations_follow_the_sae():
    x = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.5, -1.0]])
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    b_enc, b_dec = torch.tensor([0.0, 0.5, -1.0]), torch.tensor([0.5, 0.0, 0.0])
    pre = (x - b_dec) @ w.T + b_enc
    relu = Basis("l", w, encoder=w, encoder_bias=b_enc, decoder_bias=b_dec, activation="relu").encode(x)
    assert torch.allclose(relu, pre.clamp_min(0))
    top1 = Basis("l", w, encoder=w, encoder_bias=b_enc, decoder_bias=b_dec, activation="topk", k=1).encode(x)
    assert ((top1 > 0).sum(dim=1) <= 1).all() and torch.allclose(top1.max(dim=1).values, pre.max(dim=1).values.clamp_min(0))
    jump = Basis("l", w, encoder=w, encoder_bias=b_enc, decoder_bias=b_dec, activation="jumprelu",
                 threshold=torch.tensor([0.6, 0.0, 0.0])).encode(x)
    assert torch.allclose(jump, torch.where(pre > torch.tensor([0.6, 0.0, 0.0]), pre, torch.zeros_like(pre)))


def test_basis_files_load_from_every_plain_format(tmp_path):
    from safetensors.torch import save_file

    w_dec, w_enc = torch.randn(7, 6), torch.randn(6, 7)  # W_enc stored [C, n], as SAE libraries do
    save_file({"W_dec": w_dec, "W_enc": w_enc, "b_enc": torch.zeros(7), "b_dec": torch.zeros(6)},
              str(tmp_path / "sae.safetensors"))
    sae = load_basis(str(tmp_path / "sae.safetensors"), "conv1", 6)
    assert sae.units == 7 and sae.activation == "relu" and torch.equal(sae.encoder, w_enc.T)
    np.savez(tmp_path / "dirs.npz", directions=np.eye(6)[:2])
    assert load_basis(str(tmp_path / "dirs.npz"), "conv1", 6).units == 2
    torch.save(torch.eye(6)[:3], tmp_path / "dirs.pt")
    assert load_basis(str(tmp_path / "dirs.pt"), "conv1", 6).activation == "none"


def test_bad_basis_files_are_refused_naming_them(tmp_path):
    torch.save(torch.randn(4, 7), tmp_path / "wide.pt")
    with pytest.raises(BasisError, match=r"wide.pt.*layer conv1 has 6 channels"):
        load_basis(str(tmp_path / "wide.pt"), "conv1", 6)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"directions": Payload()}))
    with pytest.raises(BasisError, match="evil.pt is not plain tensors"):
        load_basis(str(tmp_path / "evil.pt"), "conv1", 6)
    assert not marker.exists()
    np.savez(tmp_path / "nothing.npz", other=np.ones(3))
    with pytest.raises(BasisError, match="no 'directions' or 'W_dec'"):
        load_basis(str(tmp_path / "nothing.npz"), "conv1", 6)
    model = tiny_model(input_size=10)
    with pytest.raises(BasisError, match="has 5 channels per direction but layer conv1 has 6"):
        Scanner(model, ["conv1"], bases={"conv1": Basis("conv1", torch.eye(5))})


def test_a_one_hot_direction_renders_exactly_like_its_channel():
    from loupe.pipeline.featurevis import objectives, param, render_vis

    model = tiny_model(input_size=16)
    picked = [4, 1]
    settings = dict(thresholds=(12,), seed=3, progress=False)
    by_channel = render_vis(model, objectives.each_channel("conv1", picked), lambda: param.image(16, batch=2), **settings)
    by_direction = render_vis(model, objectives.each_direction("conv1", torch.eye(6)[picked]),
                              lambda: param.image(16, batch=2), **settings)
    assert np.array_equal(by_channel[0], by_direction[0])
    neuron = render_vis(model, objectives.each_neuron("conv1", picked), lambda: param.image(16, batch=2), **settings)
    direction_neuron = render_vis(model, objectives.each_direction_neuron("conv1", torch.eye(6)[picked]),
                                  lambda: param.image(16, batch=2), **settings)
    assert np.array_equal(neuron[0], direction_neuron[0])
    with pytest.raises(Exception, match="do not fit layer conv1"):
        render_vis(model, objectives.each_direction("conv1", torch.eye(5)[:2]), lambda: param.image(16, batch=2),
                   **settings)


@pytest.mark.parametrize("kind", ["channel", "neuron", "negative", "diversity"])
def test_render_units_in_a_one_hot_basis_equal_the_channels(kind):
    from loupe.pipeline.featurevis import RenderSettings, render_units

    model = tiny_model(input_size=16)
    settings = RenderSettings(size=16, steps=6, images_per_unit=2 if kind == "diversity" else 1)
    picked = [3, 1]
    channels = render_units(model, "conv1", picked, kind, settings, seed=2)
    basis = Basis("conv1", torch.eye(6)[[0, 1, 2, 3]])  # unit u of the basis = channel u
    directions = render_units(model, "conv1", picked, kind, settings, seed=2, basis=basis)
    assert np.array_equal(channels.images, directions.images)
    assert np.allclose(channels.activations, directions.activations, rtol=1e-6, atol=1e-7)
    with pytest.raises(Exception, match="unit 5 is outside basis"):
        render_units(model, "conv1", [5], kind, settings, basis=basis)


def test_channels_and_bases_of_one_layer_come_from_one_pass_and_equal_separate_scans(listing):
    model = tiny_model(input_size=10)
    first, second = Basis("conv1", torch.randn(3, 6)), Basis("conv1", torch.eye(6)[[5, 0]])
    together = scan(model, listing, {"conv1@a": first, "conv1@b": second})
    assert list(together.layers) == ["conv1", "conv1@a", "conv1@b"]
    alone = {"conv1": scan(model, listing).layers["conv1"], "conv1@a": scan(model, listing, {"conv1": first}).layers["conv1"],
             "conv1@b": scan(model, listing, {"conv1": second}).layers["conv1"]}
    for name, expected in alone.items():
        got = together.layers[name]
        assert got.channels == expected.channels
        for part in ("top", "bottom"):
            assert np.array_equal(getattr(got, part).keys, getattr(expected, part).keys), name
            assert np.array_equal(getattr(got, part).image_index, getattr(expected, part).image_index), name
            assert np.array_equal(getattr(got, part).box, getattr(expected, part).box), name


@pytest.mark.parametrize("activation", ["none", "relu", "jumprelu", "topk"])
def test_chunked_and_per_unit_encodings_match_the_whole_encoding(activation, monkeypatch):
    import loupe.pipeline.models.basis as basis_module

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7, 5, generator=generator)  # [images, positions, channels]
    basis = Basis("l", torch.randn(9, 5, generator=generator), encoder=torch.randn(9, 5, generator=generator),
                  encoder_bias=torch.randn(9, generator=generator), decoder_bias=torch.randn(5, generator=generator),
                  activation=activation, k=3 if activation == "topk" else None,
                  threshold=torch.rand(9, generator=generator) if activation == "jumprelu" else None)
    whole = basis.encode(x)
    monkeypatch.setattr(basis_module, "CHUNK_VALUES", 14 * 2)  # two units per chunk for 14 vectors
    assert basis.units_per_chunk(14) == 2
    cutoff = basis.topk_cutoffs(x) if activation == "topk" else None
    chunks = torch.cat([basis.encode_slice(x, s, min(s + 2, 9), cutoff) for s in range(0, 9, 2)], dim=-1)
    torch.testing.assert_close(chunks, whole, rtol=1e-6, atol=1e-6)
    streamed = list(basis.encode_chunks(x))
    assert [(a, b) for a, b, _ in streamed] == [(s, min(s + 2, 9)) for s in range(0, 9, 2)]
    torch.testing.assert_close(torch.cat([v for _, _, v in streamed], dim=-1), whole, rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(basis_module, "CHUNK_VALUES", 1 << 26)  # one chunk: pre-activations computed once
    [(start, stop, single)] = list(basis.encode_chunks(x))
    assert (start, stop) == (0, 9)
    torch.testing.assert_close(single, whole, rtol=1e-6, atol=1e-6)
    units = torch.tensor([4, 0])
    torch.testing.assert_close(basis.encode_units(x, units), whole[torch.arange(2), :, units], rtol=1e-6, atol=1e-6)


def test_a_wide_basis_scans_in_unit_chunks_with_the_same_results(listing, monkeypatch):
    import loupe.pipeline.models.basis as basis_module

    model = tiny_model(input_size=10)
    sae = Basis("conv1", torch.randn(12, 6), encoder=torch.randn(12, 6), encoder_bias=torch.zeros(12),
                activation="topk", k=2)
    whole = scan(model, listing, {"conv1@sae": sae}).layers["conv1@sae"]
    monkeypatch.setattr(basis_module, "CHUNK_VALUES", 4 * 100 * 3)  # 3 latents per chunk (4 images x 100 positions)
    chunked = scan(model, listing, {"conv1@sae": sae}).layers["conv1@sae"]
    for part in ("top", "bottom"):
        assert np.array_equal(getattr(chunked, part).image_index, getattr(whole, part).image_index)
        np.testing.assert_allclose(getattr(chunked, part).values(bottom=part == "bottom"),
                                   getattr(whole, part).values(bottom=part == "bottom"), rtol=1e-5, atol=1e-6)
