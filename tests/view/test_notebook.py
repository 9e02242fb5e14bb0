"""Notebook display: a unit and a layer grid render themselves as self-contained HTML whose inline
images decode to exactly the stored pixels."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from loupe.storage import StorageError, open_atlas


def inline_images(html: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))
            for data in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_unit_shows_renders_examples_and_statistics(viewer_atlas):
    atlas = open_atlas(str(viewer_atlas))
    view = atlas.unit("r20", "layer2", 2)
    html = view._repr_html_()
    images = inline_images(html)
    channel = atlas.render("r20", "layer2", 2, "channel")
    diversity = atlas.render("r20", "layer2", 2, "diversity")
    top = atlas.example_pictures("r20", "layer2", 2, "top").pictures
    assert np.array_equal(images[0], channel)
    assert np.array_equal(images[1], diversity[0]) and np.array_equal(images[2], diversity[1])
    assert any(np.array_equal(image, top[0]) for image in images)
    assert "max_max" in html and "r20 / layer2 / unit 2" in html
    with pytest.raises(StorageError, match="no unit 999"):
        atlas.unit("r20", "layer2", 999)


def test_layer_grid_shows_every_rendered_unit(viewer_atlas):
    atlas = open_atlas(str(viewer_atlas))
    html = atlas.layer("r20", "layer2")._repr_html_()
    units, renders = atlas.layer_renders("r20", "layer2", "channel")
    images = inline_images(html)
    assert len(images) == len(units) == 12
    assert all(np.array_equal(a, b) for a, b in zip(images, renders))
