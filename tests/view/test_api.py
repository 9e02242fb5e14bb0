"""The viewer's JSON + PNG API and pages over HTTP: content, caching headers, 404s that name the
culprit, a damaged object breaking only its own image, and no writes to the atlas."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from loupe.jobs.view import create_app
from loupe.storage import open_atlas


@pytest.fixture(scope="module")
def client(viewer_atlas) -> TestClient:
    with TestClient(create_app(str(viewer_atlas))) as test_client:
        yield test_client


def png_of(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_atlas_endpoint_lists_versions_models_layers(client, viewer_atlas):
    atlas = open_atlas(str(viewer_atlas))
    body = client.get("/api/atlas").json()
    assert body["version"] == body["current"] == atlas.version
    assert [v["version"] for v in body["versions"]] == [atlas.version]
    assert set(body["models"]["r20"]) == {"layer1.0.bn1", "layer2"}
    assert body["models"]["r20"]["layer2"]["kinds"] == ["channel", "diversity"]


def test_json_is_revalidated_by_etag_and_pinned_versions_are_immutable(client, viewer_atlas):
    first = client.get("/api/m/r20/layer2")
    assert first.headers["cache-control"] == "no-cache"
    again = client.get("/api/m/r20/layer2", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    version = first.json()["version"]
    pinned = client.get(f"/api/m/r20/layer2?v={version}")
    assert "immutable" in pinned.headers["cache-control"]
    units = pinned.json()["units"]
    assert [row["unit"] for row in units] == list(range(len(units))), "one row per unit, in order"


def test_unit_record_and_every_image_it_names(client, viewer_atlas):
    atlas = open_atlas(str(viewer_atlas))
    record = client.get("/api/m/r20/layer2/1").json()
    assert record["unit"] == 1 and record["previous"] == 0 and record["next"] == 2
    assert record["stats"]["max_max"] == pytest.approx(atlas.stats("r20", "layer2", 1)["max_max"])
    [channel] = record["renders"]["channel"]
    response = client.get(channel)
    assert "immutable" in response.headers["cache-control"]
    assert np.array_equal(png_of(response), atlas.render("r20", "layer2", 1, "channel"))
    assert len(record["renders"]["diversity"]) == 2
    second = png_of(client.get(record["renders"]["diversity"][1]))
    assert np.array_equal(second, atlas.render("r20", "layer2", 1, "diversity")[1])
    stored = atlas.example_pictures("r20", "layer2", 1, "top")
    assert len(record["examples"]["top"]) == 3
    for row in record["examples"]["top"]:
        assert np.array_equal(png_of(client.get(row["picture"])), stored.pictures[row["rank"]])
        heat = png_of(client.get(row["heatmap"]))
        assert heat.shape == (24, 24, 4)
    assert record["samples"] and all(client.get(s["picture"]).status_code == 200 for s in record["samples"])
    assert sum(b["count"] for b in record["histogram"]) == record["stats"]["images"]


@pytest.mark.parametrize("path, culprit", [
    ("/m/nomodel/layer2", "nomodel"),
    ("/m/r20/nolayer", "nolayer"),
    ("/m/r20/layer2/999", "999"),
    ("/m/r20/layer2/abc", "abc"),
    ("/m/r20/layer2?v=20990101T000000Z-deadbeef", "20990101T000000Z-deadbeef"),
    ("/api/m/r20/nolayer", "nolayer"),
    ("/api/m/r20/layer2/999", "999"),
    ("/img/20990101T000000Z-deadbeef/render/r20/layer2/channel/0.png", "20990101T000000Z-deadbeef"),
    ("/no/such/page/at/all", "/no/such/page/at/all"),
])
def test_unknown_names_get_a_404_naming_them(client, path, culprit):
    response = client.get(path)
    assert response.status_code == 404
    assert culprit in response.text
    assert "Traceback" not in response.text


def test_a_damaged_object_breaks_only_its_image(atlas_copy):
    atlas = open_atlas(str(atlas_copy))
    shard = atlas_copy / "versions" / atlas.version / "renders" / "r20" / "layer2" / "channel.zarr" / "c" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[8] ^= 0xFF  # inside the first inner chunk: unit 0 (the shard index sits at the end)
    shard.write_bytes(bytes(data))
    with TestClient(create_app(str(atlas_copy))) as damaged:
        record = damaged.get("/api/m/r20/layer2/0").json()
        image = damaged.get(record["renders"]["channel"][0])
        assert image.status_code == 500 and "channel.zarr" in image.json()["detail"]
        assert damaged.get("/m/r20/layer2/0").status_code == 200
        assert damaged.get("/m/r20/layer2").status_code == 200


def test_the_viewer_never_writes_to_the_atlas(client, viewer_atlas):
    def snapshot(root: Path) -> dict:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}

    before = snapshot(viewer_atlas)
    for path in ("/", "/m/r20/layer2", "/m/r20/layer2/0", "/m/r20/layer1.0.bn1?sort=max_max&desc=1",
                 "/api/atlas", "/api/m/r20/layer2/3"):
        assert client.get(path).status_code == 200, path
    assert snapshot(viewer_atlas) == before


def test_layer_grid_sorts_by_a_score_and_marks_dead_units(client, viewer_atlas):
    atlas = open_atlas(str(viewer_atlas))
    rows = atlas.units_table("r20", "layer2").to_pylist()
    expected = [r["unit"] for r in sorted(rows, key=lambda r: r["max_max"], reverse=True)]
    page = client.get("/m/r20/layer2?sort=max_max&desc=1").text
    order = [int(chunk.split('"')[0]) for chunk in page.split('data-unit="')[1:]]
    assert order == expected[:len(order)]
    assert client.get("/m/r20/layer2?sort=nonsense").status_code == 404
