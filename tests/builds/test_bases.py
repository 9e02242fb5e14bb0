"""Bases in a build: (model, layer, basis, unit) is an atlas axis.

An identity basis gives exactly the channels' renders, statistics, examples and pictures; an SAE
trained here on the quickstart model's activations builds into an atlas whose latents have
renders, examples and statistics equal to the SAE's own computation, readable by the reader and
the viewer; bad basis files are refused before any compute, naming the config field and file.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from starlette.testclient import TestClient

from loupe.jobs.build import run_build
from loupe.jobs.build.config import ConfigError, parse_config
from loupe.jobs.build.plan import plan_renders
from loupe.jobs.build.resolve import build_model, resolve_build
from loupe.jobs.cli.sample_images import write_sample_images
from loupe.jobs.view import create_app
from loupe.pipeline.data.decode import decode_image
from loupe.pipeline.models import capture
from loupe.pipeline.scan.layout import as_channels_first
from loupe.storage import open_atlas

from tests.builds.build_helpers import tiny_config, write_images


def build(config: dict):
    summary = run_build(parse_config(config), executor="local", progress=False, log=lambda _: None)
    assert summary.published, summary.failed
    return summary


# ---- an identity basis is exactly the channels ---------------------------------------------------
def identity_config(tmp_path: Path, basis_file: Path) -> dict:
    config = tiny_config(str(tmp_path / "atlas"), str(write_images(tmp_path / "images", count=10)))
    config["models"][0]["layers"] = [{"name": "layer2", "units": "0-3",
                                      "bases": [{"name": "eye", "url": str(basis_file), "units": "0-3"}]}]
    config["render"] = {"channel": {"size": 32, "steps": 3, "units_per_item": 4},
                        "neuron": {"enabled": True, "size": 32, "steps": 3, "units_per_item": 4}}
    config["scan"].update(examples={"example_size": 16, "heatmap_size": 4, "quantiles": [0, 0.5, 1],
                                    "samples_per_band": 2, "histogram_bins": 4, "units_per_item": 8})
    return config


def test_an_identity_basis_builds_exactly_the_channels(tmp_path):
    channels = build_model(parse_config(tiny_config("x", None)).models[0], with_weights=False).layer("layer2").channels
    basis_file = tmp_path / "eye.npy"
    np.save(basis_file, np.eye(channels, dtype=np.float32))
    build(identity_config(tmp_path, basis_file))
    atlas = open_atlas(str(tmp_path / "atlas"))
    assert atlas.layers("r20") == ["layer2"]
    assert atlas.bases("r20", "layer2") == ["channels", "eye"]
    assert atlas.layer_keys("r20") == ["layer2", "layer2@eye"]
    info = atlas.basis("r20", "layer2", "eye")
    assert (info.kind, info.units, info.key) == ("directions", channels, "layer2@eye")
    for kind in ("channel", "neuron"):
        for unit in range(4):
            assert np.array_equal(atlas.render("r20", "layer2", unit, kind, basis="eye"),
                                  atlas.render("r20", "layer2", unit, kind)), (kind, unit)
    ours = atlas.units_table("r20", "layer2", basis="eye").to_pylist()
    theirs = atlas.units_table("r20", "layer2").to_pylist()
    assert len(ours) == channels and ours == theirs, "statistics, scores and natural ratios agree unit by unit"
    assert atlas.examples("r20", "layer2", basis="eye").to_pylist() == atlas.examples("r20", "layer2").to_pylist()
    assert atlas.samples("r20", "layer2", basis="eye").to_pylist() == atlas.samples("r20", "layer2").to_pylist()
    for kind in atlas.example_kinds("r20", "layer2", basis="eye"):
        for unit in (0, channels - 1):
            a = atlas.example_pictures("r20", "layer2", unit, kind, basis="eye")
            b = atlas.example_pictures("r20", "layer2", unit, kind)
            assert np.array_equal(a.pictures, b.pictures) and np.array_equal(a.heatmaps, b.heatmaps, equal_nan=True)
    assert np.array_equal(atlas.activations("r20", "layer2", basis="eye")[:], atlas.activations("r20", "layer2")[:])


def test_adding_a_basis_keeps_the_channel_items_keys_and_a_rebuild_redoes_nothing(tmp_path):
    basis_file = tmp_path / "eye.npy"
    np.save(basis_file, np.eye(32, dtype=np.float32))
    with_basis = parse_config(identity_config(tmp_path, basis_file))
    plain = identity_config(tmp_path, basis_file)
    del plain["models"][0]["layers"][0]["bases"]
    keys = {m.id: {i.key for i in plan_renders(m)} for m in resolve_build(parse_config(plain), with_weights=True)}
    model = resolve_build(with_basis, with_weights=True)[0]
    basis_keys = {item.key for item in plan_renders(model) if "@" in item.spec.layer}
    channel_keys = {item.key for item in plan_renders(model) if "@" not in item.spec.layer}
    assert channel_keys == keys["r20"] and basis_keys and not basis_keys & channel_keys
    build(identity_config(tmp_path, basis_file))
    again = run_build(with_basis, executor="local", progress=False, log=lambda _: None)
    assert again.unchanged
    np.save(basis_file, 2 * np.eye(32, dtype=np.float32))  # a changed file changes only its basis's items
    model = resolve_build(with_basis, with_weights=True)[0]
    changed = {item.key for item in plan_renders(model)}
    assert channel_keys <= changed and not basis_keys & changed


# ---- an SAE trained on the quickstart model's activations ----------------------------------------
SAE_LAYER = "features.7"
LATENTS = 96
COPIED_CHANNEL = 5  # latent 0 is relu(channel 5): its top-k must be the channel's


def quickstart_activations(images: list[Path]) -> tuple[torch.Tensor, object]:
    """features.7 of the quickstart model (bundled MobileNetV2) on the images: [N, C, H, W]."""
    config = parse_config({"atlas": {"url": "x"}, "models": [{
        "id": "m", "source": "torchvision:mobilenet_v2", "weights": "bundled:mobilenet_v2_imagenet",
        "layers": [SAE_LAYER]}]}).models[0]
    model = build_model(config, with_weights=True, device="cpu")
    size, resize = model.preprocessing.input_size, model.preprocessing.resize_size
    pixels = np.stack([decode_image(path.read_bytes(), size, resize) for path in images])
    with capture(model, [SAE_LAYER]) as cap, torch.inference_mode():
        out = cap.run(torch.from_numpy(pixels).float().div(255.0))[SAE_LAYER]
    return as_channels_first(out, model.layer(SAE_LAYER).layout).float(), model


def train_sae(acts: torch.Tensor, latents: int, steps: int = 300) -> dict[str, torch.Tensor]:
    """A tiny ReLU SAE with an L1 penalty, trained in seconds on every position's activation vector."""
    torch.manual_seed(0)
    x = acts.permute(0, 2, 3, 1).reshape(-1, acts.shape[1])
    channels = x.shape[1]
    w_enc = torch.nn.Parameter(torch.randn(latents, channels) * 0.1)
    b_enc = torch.nn.Parameter(torch.zeros(latents))
    w_dec = torch.nn.Parameter(torch.randn(latents, channels) * 0.1)
    b_dec = torch.nn.Parameter(x.mean(0).clone())
    optimizer = torch.optim.Adam([w_enc, b_enc, w_dec, b_dec], lr=1e-2)
    first = None
    for _ in range(steps):
        batch = x[torch.randint(0, len(x), (1024,))]
        z = torch.relu((batch - b_dec) @ w_enc.T + b_enc)
        loss = ((z @ w_dec + b_dec - batch) ** 2).mean() + 1e-3 * z.abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.5 * first, "the SAE learned to reconstruct"
    weights = {"W_enc": w_enc.detach().clone(), "b_enc": b_enc.detach().clone(),
               "W_dec": w_dec.detach().clone(), "b_dec": b_dec.detach().clone()}
    weights["W_enc"][0] = 0  # latent 0 copies one channel exactly: relu(x_c)
    weights["W_enc"][0, COPIED_CHANNEL] = 1
    weights["b_enc"][0] = float(weights["b_dec"][COPIED_CHANNEL])  # cancels the decoder bias
    return weights


def sae_values(acts: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """The SAE's own encoding at every position: [N, latents, H, W]."""
    x = acts.permute(0, 2, 3, 1)
    z = torch.relu((x - weights["b_dec"]) @ weights["W_enc"].T + weights["b_enc"])
    return z.permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def sae_atlas(tmp_path_factory):
    root = tmp_path_factory.mktemp("sae")
    images = sorted(write_sample_images(root / "images", count=12, size=96))
    acts, _ = quickstart_activations(images)
    weights = train_sae(acts, LATENTS)
    save_file(weights, str(root / "sae.safetensors"))
    config = {
        "atlas": {"url": str(root / "atlas")},
        "models": [{"id": "mobilenet_v2", "source": "torchvision:mobilenet_v2",
                    "weights": "bundled:mobilenet_v2_imagenet",
                    "layers": [{"name": SAE_LAYER, "units": "0-1",
                                "bases": [{"name": "sae", "url": str(root / "sae.safetensors"), "units": "0-3"}]}]}],
        "render": {"channel": {"size": 48, "steps": 8, "units_per_item": 4}},
        "scan": {"dataset": {"url": str(root / "images")}, "k": 3, "shards": 2, "images_per_batch": 6,
                 "decode_workers": 0,
                 "examples": {"example_size": 24, "heatmap_size": 6, "quantiles": [0, 0.5, 1], "samples_per_band": 2,
                              "histogram_bins": 8, "units_per_item": 32}},
        "resources": {"cpus_per_actor": 1, "max_retries": 0},
    }
    build(config)
    return root, acts, weights, [p.name for p in images]


def top_rows(examples, unit: int):
    return examples.filter((pc.field("unit") == unit) & (pc.field("kind") == "top")).sort_by("rank")


def test_an_sae_trained_on_quickstart_activations_builds_into_the_atlas(sae_atlas):
    root, acts, weights, ids = sae_atlas
    atlas = open_atlas(str(root / "atlas"))
    assert atlas.bases("mobilenet_v2", SAE_LAYER) == ["channels", "sae"]
    info = atlas.basis("mobilenet_v2", SAE_LAYER, "sae")
    assert (info.kind, info.units, info.activation) == ("sae", LATENTS, "relu")
    assert info.source == str(root / "sae.safetensors") and len(info.sha256) == 64

    maxima = sae_values(acts, weights).flatten(2).amax(2).numpy()  # [images, latents]
    table = atlas.units_table("mobilenet_v2", SAE_LAYER, basis="sae")
    assert table.column("unit").to_pylist() == list(range(LATENTS)), "the scan measures every latent"
    np.testing.assert_allclose(table.column("max_max").to_numpy(), maxima.max(0), rtol=1e-4, atol=1e-5)
    dead = table.column("dead").to_numpy(zero_copy_only=False)
    assert np.array_equal(dead, maxima.max(0) <= 0), "latents that never fire are marked dead"

    examples = atlas.examples("mobilenet_v2", SAE_LAYER, basis="sae")
    live = [u for u in range(LATENTS) if maxima[:, u].max() > 0][:5]
    for unit in live:
        best = top_rows(examples, unit).to_pylist()[0]
        assert best["image_id"] == ids[int(np.argmax(maxima[:, unit]))]
        pictures = atlas.example_pictures("mobilenet_v2", SAE_LAYER, unit, "top", basis="sae")
        assert pictures.pictures.shape[1:] == (24, 24, 3) and pictures.pictures[0].any()
        heat = pictures.heatmaps[0].astype(np.float32)
        assert np.isclose(np.nanmax(heat), maxima[:, unit].max(), rtol=2e-3), "heat maps show the latent's values"

    channel_top = top_rows(atlas.examples("mobilenet_v2", SAE_LAYER), COPIED_CHANNEL)
    latent_top = top_rows(examples, 0)
    positive = [a > 0 for a in channel_top.column("value").to_pylist()]
    assert any(positive)
    assert [r for r, p in zip(latent_top.column("image_id").to_pylist(), positive) if p] == \
        [r for r, p in zip(channel_top.column("image_id").to_pylist(), positive) if p], \
        "a latent that copies a channel has the channel's top-k"

    assert atlas.render_units("mobilenet_v2", SAE_LAYER, basis="sae") == [0, 1, 2, 3]
    assert atlas.render("mobilenet_v2", SAE_LAYER, 2, basis="sae").shape == (48, 48, 3)
    scored = table.filter(pc.less(table.column("unit"), 4))
    assert all(v is not None for v in scored.column("fv_activation").to_pylist())
    assert all(v is not None for v in scored.column("fv_natural_ratio").to_pylist())


def test_the_viewer_shows_sae_latents(sae_atlas):
    root, *_ = sae_atlas
    with TestClient(create_app(str(root / "atlas"))) as client:
        home = client.get("/")
        assert home.status_code == 200 and "sae: 96 SAE latents (relu)" in home.text
        assert 'href="/m/mobilenet_v2/features.7@sae"' in home.text
        layer = client.get("/m/mobilenet_v2/features.7@sae")
        assert layer.status_code == 200 and 'id="bases"' in layer.text and "channels" in layer.text
        unit = client.get("/api/m/mobilenet_v2/features.7@sae/2").json()
        assert unit["layer"] == "features.7@sae" and unit["renders"]["channel"]
        for url in [unit["renders"]["channel"][0], unit["examples"]["top"][0]["picture"],
                    unit["examples"]["top"][0]["heatmap"]]:
            response = client.get(url)
            assert response.status_code == 200 and response.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(response.content)).size[0] > 0
        page = client.get("/m/mobilenet_v2/features.7@sae/2")
        assert page.status_code == 200 and "sae: 96 SAE latents" in page.text
        api = client.get("/api/atlas").json()["models"]["mobilenet_v2"]
        assert api["features.7@sae"]["basis"] == "sae" and api["features.7"]["basis"] == "channels"
        assert client.get("/m/mobilenet_v2/features.7@nope").status_code == 404


# ---- bad basis files are refused before any compute ---------------------------------------------
class Payload:
    def __reduce__(self):
        return (print, ("never run",))


@pytest.mark.parametrize("case", ["width", "pickle", "missing", "encoder"])
def test_bad_basis_files_are_refused_naming_the_field_and_file(tmp_path, case):
    path = tmp_path / f"basis-{case}.pt"
    if case == "width":
        torch.save({"directions": torch.randn(5, 7)}, path)  # layer2 has 32 channels
    elif case == "pickle":
        path.write_bytes(pickle.dumps({"directions": Payload()}))
    elif case == "encoder":
        torch.save({"W_dec": torch.randn(5, 32), "W_enc": torch.randn(6, 32)}, path)
    config = tiny_config(str(tmp_path / "atlas"), None)
    config["models"][0]["layers"] = [{"name": "layer2", "bases": [{"name": "b", "url": str(path)}]}]
    with pytest.raises(ConfigError) as error:
        resolve_build(parse_config(config), with_weights=False)
    text = str(error.value)
    assert "models[0].layers[0]" in text and str(path) in text
    expected = {"width": "32 channels", "pickle": "not plain tensors", "missing": "cannot read",
                "encoder": "W_enc"}[case]
    assert expected in text
    assert not (tmp_path / "atlas").exists(), "nothing is written before the config is valid"


def test_basis_config_errors_name_their_field():
    config = tiny_config("x", None)
    config["models"][0]["layers"] = [{"name": "layer2", "channels": False},
                                     {"name": "layer1", "bases": [{"name": "channels", "url": "a.npy"},
                                                                  {"name": "t", "url": "b.npy", "activation": "topk"}]}]
    with pytest.raises(ConfigError) as error:
        parse_config(config)
    text = str(error.value)
    assert "models[0].layers[0]: channels: false needs at least one entry in bases" in text
    assert "models[0].layers[1].bases[0].name" in text and "models[0].layers[1].bases[1]" in text
    assert "topk needs k" in text


def test_a_basis_from_s3_builds_into_an_s3_atlas_like_a_local_one(tmp_path, s3_bucket, s3_options):
    import s3fs

    from tests.builds.build_helpers import atlas_snapshot

    local_file = tmp_path / "eye.npy"
    np.save(local_file, np.eye(32, dtype=np.float32)[:6])
    fs = s3fs.S3FileSystem(**s3_options)
    fs.put(str(local_file), f"{s3_bucket}/bases/eye.npy")
    s3_config = identity_config(tmp_path, local_file)
    s3_config["atlas"] = {"url": f"s3://{s3_bucket}/atlases/bases", "storage_options": s3_options}
    basis = s3_config["models"][0]["layers"][0]["bases"][0]
    basis.update(url=f"s3://{s3_bucket}/bases/eye.npy", storage_options=s3_options)
    build(s3_config)
    build(identity_config(tmp_path, local_file))
    remote = atlas_snapshot(s3_config["atlas"]["url"], s3_options)
    assert ("r20", "layer2@eye", "channel") in remote and remote == atlas_snapshot(str(tmp_path / "atlas"))
    atlas = open_atlas(s3_config["atlas"]["url"], storage_options=s3_options)
    assert atlas.basis("r20", "layer2", "eye").source == f"s3://{s3_bucket}/bases/eye.npy"
