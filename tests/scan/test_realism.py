"""Real weights, real photos: a scan of ImageNet MobileNetV2 finds each class's own photo on top."""

from __future__ import annotations

import pytest

from loupe.pipeline.data import LoaderOptions, list_images
from loupe.pipeline.models import Preprocessing, load_model
from loupe.pipeline.scan import ScanOptions, scan_dataset

pytestmark = [pytest.mark.realism, pytest.mark.slow]


def test_logit_units_rank_their_own_class_photo_first(shared_dir):
    weights = shared_dir / "models" / "mobilenet_v2_imagenet_tflite.pth"
    model = load_model("torchvision:mobilenet_v2", str(weights), device="cpu",
                       preprocessing=Preprocessing.from_range(-1.0, 1.0, input_size=224, resize_size=256))
    listing = list_images(str(shared_dir / "datasets" / "imagenet-sample"))
    assert len(listing) == 1000 and listing.ignored == 1  # README.md beside the photos
    sample = listing.slice(0, 100)  # classes 0..99, one photo each
    result = scan_dataset(model, sample, ["logits", "features.14"], options=ScanOptions(k=3),
                          loader=LoaderOptions(images_per_batch=50, workers=2))
    logits = result.layers["logits"]
    own_class_first = sum(
        int(result.image_ids[int(logits.top.image_index[unit, 0])][:4]) == unit for unit in range(100)
    )
    assert own_class_first >= 70, own_class_first
    assert (logits.top.box[:100, 0] == [0, 0, 224, 224]).all()
    boxes = result.layers["features.14"].top.box
    assert ((boxes[..., 2] - boxes[..., 0]) >= 150).all()  # 7x7 map: each cell sees most of the image
