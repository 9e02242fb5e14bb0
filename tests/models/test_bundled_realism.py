"""The bundled float16 MobileNetV2 classifies the 1000 sample photos as well as the float32 original."""

import pytest
import torch

from loupe.pipeline.models import LoadedModel, Preprocessing, load_model
from tests.models.test_realism import load_photo

pytestmark = [pytest.mark.realism, pytest.mark.slow]


def top1(model: LoadedModel, photos) -> float:
    correct = 0
    with torch.no_grad():
        for start in range(0, len(photos), 100):
            chunk = photos[start:start + 100]
            batch = torch.stack([load_photo(p, model.preprocessing) for p in chunk])
            labels = torch.tensor([int(p.name[:4]) for p in chunk])
            correct += int((model(batch).argmax(dim=1) == labels).sum())
    return correct / len(photos)


def test_float16_bundled_weights_match_float32_top1_on_imagenet_sample(shared_dir):
    photos = sorted((shared_dir / "datasets" / "imagenet-sample").glob("*.jpg"))
    assert len(photos) == 1000
    original = load_model(
        "torchvision:mobilenet_v2", str(shared_dir / "models" / "mobilenet_v2_imagenet_tflite.pth"),
        preprocessing=Preprocessing.from_range(-1.0, 1.0, resize_size=256), device="cpu",
    )
    bundled = load_model("torchvision:mobilenet_v2", "bundled:mobilenet_v2_imagenet", device="cpu")
    fp32, fp16 = top1(original, photos), top1(bundled, photos)
    print(f"MobileNetV2 top-1 on the 1000-photo sample: float32 original {fp32:.1%}, bundled float16 {fp16:.1%}")
    assert fp32 >= 0.75
    assert abs(fp16 - fp32) <= 0.01
