"""Example pictures, brute force: each image read and forwarded once, crops equal to crops cut by hand
from the decoded input, heat maps equal to the unit's map from an independent forward, values and
positions equal to the scan's, and boxes mapped exactly back into the original image's pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from loupe.pipeline.data import LoaderOptions, iter_batches, list_images
from loupe.pipeline.data.decode import decode_image, input_box_to_image_box
from loupe.pipeline.data.loader import read_images
from loupe.pipeline.models import LoadedModel, Preprocessing, capture
from loupe.pipeline.scan import (PictureCutter, PictureRequests, PictureSettings, Scanner, ScanOptions, scan_dataset,
                                 square_box)
from loupe.pipeline.scan.layout import as_channels_first
from loupe.pipeline.scan.pictures import heat_maps

from tests.scan.helpers import TinyNet, corrupt_files, jpeg_bytes, png_bytes, write_folder

INPUT, RESIZE = 10, 12  # resize then centre-crop: the crop offset is not zero
SIZES = [(14, 10), (10, 17), (23, 12), (10, 10), (31, 19), (12, 25), (16, 16), (40, 13), (11, 29)]
ROTATED = "img_rotated.jpg"  # stored 13 x 21, EXIF orientation 6: the original is 21 x 13


def tiny_model(seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    return LoadedModel.from_module(TinyNet(), preprocessing=Preprocessing(input_size=INPUT, resize_size=RESIZE),
                                   device="cpu", name="tiny")


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(3)
    files = {}
    for i, (h, w) in enumerate(SIZES):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        files[f"img{i:02d}.{'png' if i % 2 else 'jpg'}"] = png_bytes(pixels) if i % 2 else jpeg_bytes(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    files[ROTATED] = jpeg_bytes(rng.integers(0, 256, (13, 21, 3), dtype=np.uint8), exif=exif.tobytes())
    files["img04_bad.jpg"] = corrupt_files()["bad_truncated.jpg"]
    return list_images(str(write_folder(tmp_path / "images", files)))


def original_size(listing, position: int) -> tuple[int, int]:
    with Image.open(f"{listing.root}/{listing.ids([position])[0]}") as image:
        width, height = ImageOps.exif_transpose(image).size
    return height, width


def decoded_by_hand(listing, position: int) -> np.ndarray:
    with open(f"{listing.root}/{listing.ids([position])[0]}", "rb") as handle:
        return decode_image(handle.read(), INPUT, RESIZE)


def test_square_boxes_keep_the_field_centred_and_stay_inside():
    rng = np.random.default_rng(0)
    size = 16
    corners = np.sort(rng.integers(0, size + 1, (2000, 2, 2)), axis=1)  # (y or x, lo/hi)
    boxes = np.stack([corners[:, 0, 0], corners[:, 0, 1], corners[:, 1, 0], corners[:, 1, 1]], axis=1)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    boxes = np.minimum(boxes, size)
    boxes[:, :2] = np.minimum(boxes[:, :2], boxes[:, 2:] - 1)
    squares = square_box(boxes, size)
    assert squares.dtype == np.int32
    for box, square in zip(boxes.tolist(), squares.tolist()):
        y0, x0, y1, x1 = box
        side = max(y1 - y0, x1 - x0)
        assert square[2] - square[0] == side == square[3] - square[1]
        assert 0 <= square[0] <= y0 and y1 <= square[2] <= size and 0 <= square[1] <= x0 and x1 <= square[3] <= size
        for lo, hi, start in ((y0, y1, square[0]), (x0, x1, square[1])):
            extra = side - (hi - lo)
            if lo - extra // 2 >= 0 and hi + extra - extra // 2 <= size:  # room on both sides: centred
                assert start == lo - extra // 2
    assert square_box(np.array([[0, 0, 3, 7], [8, 2, 10, 10]]), 10).tolist() == [[0, 0, 7, 7], [2, 2, 10, 10]]


def test_read_images_reads_each_once_like_the_loader_and_skips_bad_ones(dataset):
    everything = read_images(dataset, np.arange(len(dataset)), INPUT, RESIZE)
    bad = list(dataset.ids(range(len(dataset)))).index("img04_bad.jpg")
    assert len(everything.positions) == len(dataset) - 1
    assert [(s.position, s.image_id) for s in everything.skipped] == [(bad, "img04_bad.jpg")]
    assert "truncated" in everything.skipped[0].reason
    batches = list(iter_batches(dataset, INPUT, RESIZE, options=LoaderOptions(images_per_batch=4, workers=0)))
    assert np.array_equal(everything.images, np.concatenate([b.images.numpy() for b in batches]))
    assert np.array_equal(everything.positions, np.concatenate([b.positions for b in batches]))
    assert np.array_equal(everything.keys, np.concatenate([b.keys for b in batches]))
    assert everything.skipped == [s for b in batches for s in b.skipped]
    assert everything.original_sizes.tolist() == [list(original_size(dataset, int(p))) for p in everything.positions]
    assert list(original_size(dataset, list(dataset.ids(range(len(dataset)))).index(ROTATED))) == [21, 13]

    some = read_images(dataset, np.array([1, bad, 6]), INPUT, RESIZE)
    assert some.positions.tolist() == [1, 6] and some.has(np.array([6, bad, 0, 1])).tolist() == [True, False, False, True]
    assert np.array_equal(some.images[1], decoded_by_hand(dataset, 6))
    with pytest.raises(Exception, match="increasing"):
        read_images(dataset, np.array([2, 2]), INPUT, RESIZE)


@pytest.mark.parametrize("resize", [RESIZE, 10, 7])  # 7 < 10: the crop pads the resized image with zeros
def test_image_boxes_invert_the_resize_and_crop(resize):
    sizes = [(h, w) for h in range(1, 45, 3) for w in range(1, 45, 4)] + [(300, 200), (200, 301)]
    boxes = np.array([[2, 3, 7, 9], [0, 0, INPUT, INPUT]])
    mapped = input_box_to_image_box(boxes[None], np.array(sizes)[:, None], INPUT, resize)
    assert mapped.shape == (len(sizes), 2, 4) and mapped.dtype == np.float64
    for (height, width), got in zip(sizes, mapped):
        new_h, new_w = (resize, int(width * resize / height)) if height < width else (int(height * resize / width), resize)
        top, left = round((new_h - INPUT) / 2), round((new_w - INPUT) / 2)
        if new_h < INPUT:
            top = -((INPUT - new_h) // 2)
        if new_w < INPUT:
            left = -((INPUT - new_w) // 2)
        for box, row in zip(boxes, got):
            y0, x0, y1, x1 = box
            expected = [(y0 + top) * height / new_h, (x0 + left) * width / new_w,
                        (y1 + top) * height / new_h, (x1 + left) * width / new_w]
            assert row.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12), (height, width)
        # the full input is the centre of the original, within one resized pixel
        full = got[1]
        assert abs((full[0] + full[2]) / 2 - height / 2) <= height / new_h
        assert abs((full[1] + full[3]) / 2 - width / 2) <= width / new_w
        assert full[2] - full[0] == pytest.approx(INPUT * height / new_h)


def test_the_original_cropped_at_the_image_box_looks_like_the_picture():
    rng = np.random.default_rng(0)
    for height, width in [(300, 200), (180, 420)]:
        smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
                            .resize((width, height), Image.BILINEAR))
        model_input = decode_image(png_bytes(smooth), 40, 48).transpose(1, 2, 0)
        for box in ([5, 8, 25, 30], [0, 0, 40, 40], [30, 2, 40, 12]):
            y0, x0, y1, x1 = (int(round(v)) for v in input_box_to_image_box(np.array(box), (height, width), 40, 48))
            again = np.asarray(Image.fromarray(smooth[y0:y1, x0:x1]).resize((box[3] - box[1], box[2] - box[0]),
                                                                            Image.BILINEAR))
            crop = model_input[box[0]:box[2], box[1]:box[3]]
            assert np.abs(again.astype(int) - crop.astype(int)).mean() < 3, (height, width, box)


def test_heat_maps_sample_the_map_under_each_cell_centre():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(6, 3, 7)).astype(np.float32)
    boxes = np.array([[0, 0, 21, 21], [3, 5, 12, 14], [20, 20, 21, 21], [0, 7, 8, 15], [13, 1, 21, 9], [2, 2, 5, 5]])
    got = heat_maps(maps, boxes, 21, 4)
    assert got.dtype == np.float16 and got.shape == (6, 4, 4)
    for m, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
        for i in range(4):
            for j in range(4):
                py, px = y0 + (i + 0.5) * (y1 - y0) / 4, x0 + (j + 0.5) * (x1 - x0) / 4
                assert got[m, i, j] == np.float16(maps[m, min(math.floor(py * 3 / 21), 2), min(math.floor(px * 7 / 21), 6)])


def count_forwards(model: LoadedModel) -> list[int]:
    calls = []
    model.module.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    return calls


@pytest.mark.parametrize("layer", ["conv1", "clamp"])
def test_pictures_heatmaps_and_values_match_brute_force_and_the_scan(dataset, layer):
    model = tiny_model()
    batch = 3
    result = scan_dataset(model, dataset, [layer], options=ScanOptions(k=2, pooled=False),
                          loader=LoaderOptions(images_per_batch=batch, workers=0))
    scanned = result.layers[layer]
    field = Scanner(model, [layer]).receptive_fields[layer]
    cutter = PictureCutter(model, layer, field, PictureSettings(example_size=8, heatmap_size=5), images_per_batch=batch)
    units = np.repeat(np.arange(scanned.channels), 2)
    ranks = np.tile([0, 1], scanned.channels)
    requests = PictureRequests(scanned.top.image_index[units, ranks], units, scanned.top.position[units, ranks])
    needed = np.unique(requests.image_index)  # what a build decodes: only the images the pages name
    decoded = read_images(dataset, needed, INPUT, RESIZE)
    forwards = count_forwards(model)
    pictures = cutter.cut(decoded, requests)
    assert forwards == [batch] * -(-len(needed) // batch)  # each needed image through the model once, padded
    assert np.array_equal(pictures.value, scanned.top.values(bottom=False)[units, ranks])
    assert np.array_equal(pictures.position, requests.position)
    assert np.array_equal(pictures.field_box, scanned.top.box[units, ranks])
    found = cutter.cut(decoded, PictureRequests(requests.image_index, units, np.full(len(units), -1)))
    assert np.array_equal(found.position, requests.position) and np.array_equal(found.value, pictures.value)

    height, width = scanned.spatial
    for i in range(len(units)):
        image = decoded_by_hand(dataset, int(requests.image_index[i]))
        y0, x0, y1, x1 = pictures.input_box[i]
        assert y1 - y0 == x1 - x0 == max(np.diff(pictures.field_box[i].reshape(2, 2), axis=0)[0])
        expected = np.asarray(Image.fromarray(np.ascontiguousarray(image[:, y0:y1, x0:x1].transpose(1, 2, 0)))
                              .resize((8, 8), Image.BILINEAR))
        assert np.array_equal(pictures.pixels[i], expected)
        with capture(model, [layer]) as cap, torch.inference_mode():
            alone = cap.run(torch.from_numpy(image)[None].float() / 255)[layer]
        unit_map = as_channels_first(alone, "NCHW")[0, units[i]].numpy()
        assert unit_map.max() == pytest.approx(pictures.value[i], abs=1e-5)
        for a in range(5):
            for b in range(5):
                py, px = y0 + (a + 0.5) * (y1 - y0) / 5, x0 + (b + 0.5) * (x1 - x0) / 5
                want = unit_map[min(math.floor(py * height / INPUT), height - 1), min(math.floor(px * width / INPUT), width - 1)]
                assert float(pictures.heatmaps[i, a, b]) == pytest.approx(want, rel=2e-3, abs=1e-4)
        size = original_size(dataset, int(requests.image_index[i]))
        assert tuple(pictures.image_size[i]) == size
        assert pictures.image_box[i].tolist() == input_box_to_image_box(pictures.input_box[i], size, INPUT,
                                                                        RESIZE).tolist()


def test_requests_for_skipped_images_unknown_units_or_positions_are_named(dataset):
    model = tiny_model()
    field = Scanner(model, ["conv1"]).receptive_fields["conv1"]
    cutter = PictureCutter(model, "conv1", field, PictureSettings(8, 5), images_per_batch=4)
    bad = list(dataset.ids(range(len(dataset)))).index("img04_bad.jpg")
    decoded = read_images(dataset, np.arange(len(dataset)), INPUT, RESIZE)
    with pytest.raises(Exception, match=r"img04_bad\.jpg.*skipped"):
        cutter.cut(decoded, PictureRequests(np.array([0, bad]), np.array([0, 1]), np.array([-1, -1])))
    with pytest.raises(Exception, match="unit 9"):
        cutter.cut(decoded, PictureRequests(np.array([0]), np.array([9]), np.array([-1])))
    with pytest.raises(Exception, match="position 100"):
        cutter.cut(decoded, PictureRequests(np.array([0]), np.array([0]), np.array([100])))
    with pytest.raises(Exception, match="listing position 2 was not"):
        cutter.cut(read_images(dataset, np.array([0, 1]), INPUT, RESIZE),
                   PictureRequests(np.array([2]), np.array([0]), np.array([-1])))
    with pytest.raises(Exception, match="example_size"):
        PictureSettings(example_size=0)
    with pytest.raises(Exception, match="heatmap_size"):
        PictureSettings(heatmap_size=2.5)
    empty = cutter.cut(decoded, PictureRequests(np.zeros(0), np.zeros(0), np.zeros(0)))
    assert empty.pixels.shape == (0, 8, 8, 3) and empty.heatmaps.shape == (0, 5, 5)
