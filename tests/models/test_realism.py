"""Real weights, real photos: the offline ImageNet MobileNetV2 classifies the sample as published."""

import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from loupe.pipeline.models import Preprocessing, load_model

pytestmark = pytest.mark.realism


def load_photo(path, preprocessing: Preprocessing) -> torch.Tensor:
    with Image.open(path) as image:
        image = image.convert("RGB")
        image = TF.resize(image, preprocessing.resize_size, interpolation=TF.InterpolationMode.BILINEAR)
        image = TF.center_crop(image, preprocessing.input_size)
        return TF.to_tensor(image)


def test_mobilenet_v2_top1_on_imagenet_sample(shared_dir):
    weights = shared_dir / "models" / "mobilenet_v2_imagenet_tflite.pth"
    photos = sorted((shared_dir / "datasets" / "imagenet-sample").glob("*.jpg"))
    assert len(photos) == 1000
    model = load_model(
        "torchvision:mobilenet_v2", str(weights), preprocessing=Preprocessing.from_range(-1.0, 1.0), device="cpu"
    )
    correct = 0
    with torch.no_grad():
        for start in range(0, len(photos), 100):
            chunk = photos[start:start + 100]
            batch = torch.stack([load_photo(p, model.preprocessing) for p in chunk])
            predicted = model(batch).argmax(dim=1)
            labels = torch.tensor([int(p.name[:4]) for p in chunk])
            correct += int((predicted == labels).sum())
    accuracy = correct / len(photos)
    print(f"MobileNetV2 (offline weights) top-1 on the 1000-photo sample: {accuracy:.1%}")
    assert accuracy >= 0.75
