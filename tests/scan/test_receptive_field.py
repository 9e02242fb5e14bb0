"""Crop boxes: probed receptive fields equal the analytic ones, per position, with border clipping,
branches and the boxes a scan attaches to its examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from loupe.pipeline.data import LoaderOptions, list_images
from loupe.pipeline.models import LoadedModel, Preprocessing
from loupe.pipeline.scan import ScanError, ScanOptions, Scanner, probe_receptive_fields, scan_dataset



def wrap(module: nn.Module, size: int) -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel.from_module(module, preprocessing=Preprocessing(input_size=size, resize_size=size), device="cpu")


def analytic_boxes(chain: list[tuple[int, int, int]], size: int) -> list[np.ndarray]:
    """Boxes per layer of a chain of (kernel, stride, padding), by the textbook recurrence."""
    jump, extent, start, length = 1, 1, 0.0, size
    out = []
    for kernel, stride, padding in chain:
        start += ((kernel - 1) / 2 - padding) * jump
        extent += (kernel - 1) * jump
        jump *= stride
        length = (length + 2 * padding - kernel) // stride + 1
        centers = start + np.arange(length) * jump
        lo = np.clip(np.floor(centers - (extent - 1) / 2), 0, size).astype(int)
        hi = np.clip(np.floor(centers + (extent - 1) / 2) + 1, 0, size).astype(int)
        out.append(np.stack([lo, hi], axis=1))
    return out


def test_probed_boxes_equal_the_analytic_receptive_field_of_a_conv_pool_chain():
    size = 23
    chain = [(3, 1, 1), (3, 2, 1), (2, 2, 0), (5, 1, 2), (3, 2, 0)]
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, 2, 1), nn.MaxPool2d(2, 2),
        nn.Conv2d(4, 3, 5, 1, 2), nn.ReLU(), nn.AvgPool2d(3, 2),
    )
    model = wrap(net, size)
    names = ["0", "2", "3", "4", "6"]
    fields = probe_receptive_fields(model, names)
    for name, rows in zip(names, analytic_boxes(chain, size)):
        field = fields[name]
        assert field.shared
        height, width = model.catalog[name].spatial
        boxes = field.boxes[0].reshape(height, width, 4)
        for y in range(height):
            for x in range(width):
                assert tuple(boxes[y, x]) == (rows[y][0], rows[x][0], rows[y][1], rows[x][1]), (name, y, x)


class TwoBranches(nn.Module):
    """Inception-style concat: channels 0-1 see 1x1 patches, channels 2-4 see 5x5 patches."""

    def __init__(self):
        super().__init__()
        self.narrow = nn.Conv2d(3, 2, 1)
        self.wide = nn.Conv2d(3, 3, 5, padding=2)

    def forward(self, x):
        return torch.cat([self.narrow(x), self.wide(x)], dim=1)


def test_branches_get_per_channel_boxes():
    model = wrap(TwoBranches(), 9)
    field = probe_receptive_fields(model, ["logits"], chunk=4)["logits"]
    assert not field.shared and field.boxes.shape == (5, 81, 4)
    center = 4 * 9 + 4
    assert tuple(field.lookup(np.array([0]), np.array([center]))[0]) == (4, 4, 5, 5)
    assert tuple(field.lookup(np.array([3]), np.array([center]))[0]) == (2, 2, 7, 7)
    assert tuple(field.lookup(np.array([3]), np.array([0]))[0]) == (0, 0, 3, 3)


class Spot(nn.Module):
    """One unit that copies the red channel through a 5x5 conv (delta kernel), then 2x2 average pooling."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 5, padding=2, bias=False)
        self.pool = nn.AvgPool2d(2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 2, 2] = 1.0

    def forward(self, x):
        return self.pool(self.conv(x))


def test_scan_attaches_the_analytic_crop_box_to_the_strongest_position(tmp_path):
    size = 16
    spots = {"a_inside.png": (7, 9), "b_corner.png": (0, 0), "c_edge.png": (15, 4)}
    files = {}
    for name, (y, x) in spots.items():
        image = np.zeros((size, size, 3), dtype=np.uint8)
        image[y, x, 0] = 255 - 10 * len(files)  # distinct values: a > b > c
        path = tmp_path / "spots" / name
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(path)
    model = LoadedModel.from_module(Spot(), preprocessing=Preprocessing(mean=(0, 0, 0), std=(1, 1, 1),
                                    input_size=size, resize_size=size), device="cpu")
    result = scan_dataset(model, list_images(str(tmp_path / "spots")), ["pool"], options=ScanOptions(k=3),
                          loader=LoaderOptions(images_per_batch=4, workers=0))
    rows = [r for r in result.examples_table().to_pylist() if r["kind"] == "top"]
    assert [r["image_id"] for r in rows] == ["a_inside.png", "b_corner.png", "c_edge.png"]
    # pooled (py, px) covers conv rows 2py..2py+1, whose 5x5 windows span input rows 2py-2 .. 2py+3
    expected = {"a_inside.png": (3, 4, (4, 6, 10, 12)), "b_corner.png": (0, 0, (0, 0, 4, 4)),
                "c_edge.png": (7, 2, (12, 2, 16, 8))}
    for row in rows:
        y, x, box = expected[row["image_id"]]
        assert (row["y"], row["x"]) == (y, x)
        assert (row["field_y0"], row["field_x0"], row["field_y1"], row["field_x1"]) == box
        spot_y, spot_x = spots[row["image_id"]]
        assert box[0] <= spot_y < box[2] and box[1] <= spot_x < box[3]


def test_vector_layers_get_the_whole_image_and_fields_are_cached():
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    model = wrap(net, 8)
    scanner = Scanner(model, ["3"], ScanOptions(k=2))
    field = scanner.receptive_fields["3"]
    assert field.boxes.shape == (1, 1, 4) and tuple(field.boxes[0, 0]) == (0, 0, 8, 8)
    assert Scanner(model, ["3"]).receptive_fields["3"] is field


def test_fields_probed_elsewhere_can_be_given_to_a_scanner():
    net = nn.Sequential(nn.Conv2d(3, 2, 3, stride=2))
    model = wrap(net, 9)
    fields = Scanner(model, ["0"]).receptive_fields
    other = wrap(nn.Sequential(nn.Conv2d(3, 2, 3, stride=2)), 9)
    assert Scanner(other, ["0"], receptive_fields=fields).receptive_fields["0"] is fields["0"]
    with pytest.raises(ScanError, match="probed for another input size"):
        Scanner(wrap(nn.Sequential(nn.Conv2d(3, 2, 3, stride=2)), 11), ["0"], receptive_fields=fields)
