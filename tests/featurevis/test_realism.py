"""Realism: renders of a real ImageNet MobileNetV2 beat real photos at exciting their own units.

Uses the offline weights and the 1000-photo sample in ../shared (skips where absent). All 16
channel renders share one optimization (batch 16, forward stopped after features.10); the 8 class
renders share another (one `class_logit(..., batch=i)` per image). About 6 minutes on 2 busy
CPU cores, hence also `slow`.
"""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models import MobileNet_V2_Weights
from torchvision.transforms import functional as TF

from loupe.pipeline.featurevis import RenderSettings, objectives, param, render_units, render_vis
from loupe.pipeline.models import LoadedModel, Preprocessing, capture, load_model

pytestmark = [pytest.mark.realism, pytest.mark.slow]

LAYER = "features.10"
CHANNELS = list(range(0, 64, 4))  # 16 of the layer's 64 channels
CLASSES = ["goldfish", "flamingo", "monarch", "balloon", "strawberry", "volcano", "bell pepper", "lemon"]


@pytest.fixture(scope="module")
def mobilenet(shared_dir) -> LoadedModel:
    weights = shared_dir / "models" / "mobilenet_v2_imagenet_tflite.pth"
    model = load_model("torchvision:mobilenet_v2", str(weights), preprocessing=Preprocessing.from_range(-1.0, 1.0), device="cpu")
    model.categories = list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])  # same class order (README)
    return model


def photo_batches(shared_dir, preprocessing: Preprocessing, batch: int = 50):
    paths = sorted((shared_dir / "datasets" / "imagenet-sample").glob("*.jpg"))
    assert len(paths) == 1000
    for start in range(0, len(paths), batch):
        images = []
        for path in paths[start:start + batch]:
            with Image.open(path) as image:
                image = TF.resize(image.convert("RGB"), preprocessing.resize_size, interpolation=TF.InterpolationMode.BILINEAR)
                images.append(TF.to_tensor(TF.center_crop(image, preprocessing.input_size)))
        yield torch.stack(images)


def test_channel_renders_beat_every_sample_photo(mobilenet, shared_dir):
    best_photo = torch.full((64,), -float("inf"))
    with torch.no_grad(), capture(mobilenet, [LAYER]) as cap:
        for photos in photo_batches(shared_dir, mobilenet.preprocessing):
            best_photo = torch.maximum(best_photo, cap.run(photos)[LAYER].mean(dim=(2, 3)).amax(dim=0))
    renders = render_units(mobilenet, LAYER, CHANNELS, settings=RenderSettings(steps=512), images_per_step=len(CHANNELS))
    photo_max = best_photo[CHANNELS].numpy()
    wins = int((renders.activations > photo_max).sum())
    for unit, rendered, photo in zip(CHANNELS, renders.activations, photo_max):
        print(f"{LAYER}:{unit}: render {rendered:.3f} vs best photo {photo:.3f}")
    assert wins >= 14, f"only {wins} of 16 renders beat the best of 1000 photos"


def test_class_logit_renders_are_classified_as_their_class(mobilenet):
    objective = sum(objectives.class_logit("logits", name, batch=i) for i, name in enumerate(CLASSES))
    (images,) = render_vis(mobilenet, objective, param_f=lambda: param.image(128, batch=len(CLASSES)),
                           thresholds=(256,), seed=0, progress=False)
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    targets = [mobilenet.categories.index(name) for name in CLASSES]
    with torch.no_grad():
        as_rendered = mobilenet(x).argmax(dim=1).tolist()  # the image as made: 128 px
        upsampled = mobilenet(F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)).argmax(dim=1).tolist()
    names = [mobilenet.categories[i] for i in as_rendered]
    assert as_rendered == targets, f"rendered {CLASSES}, classified as {names}"
    # Seen at another scale (the model's 224 px) most must still read as their class.
    assert sum(p == t for p, t in zip(upsampled, targets)) >= 6, [mobilenet.categories[i] for i in upsampled]
