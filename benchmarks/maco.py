"""Lucid's parameterization against MACO's: the activation a render reaches and how natural its spectrum is.

Two models:

(a) a small vision transformer (torchvision's VisionTransformer, 64 px, 8 px patches) trained inside
    the benchmark on synthetic pictures (oriented gratings in two colour schemes on 1/f noise);
    MACO's magnitude spectrum comes from those pictures.
(b) the ImageNet MobileNetV2 Loupe ships (`bundled:mobilenet_v2_imagenet`, or the copy in
    ../shared/models); MACO's magnitude spectrum comes from ../shared/datasets/imagenet-sample.
    Skipped, with a message, where the weights or the images are absent.

The two arms differ only in `RenderSettings.param` ("lucid": Lucid's FFT image in decorrelated
colour through a sigmoid; "maco": the phase of an image whose Fourier magnitude is fixed at the
dataset's mean magnitude). Everything else is the same: units, steps, Adam and its learning rate,
the standard transforms and every unit's transform draws (seeded per unit), the redirected ReLU
for the first 16 steps, and the measurement. Per layer it reports the mean over units of the
activation reached (the unit's mean over positions on the final uint8 render) and maco / lucid,
and the spectrum slope (least-squares slope of log power against log frequency of the radially
averaged power spectrum, `loupe.pipeline.featurevis.spectrum.spectrum_slope`) of lucid's renders,
MACO's renders and the dataset's images at the render size. Natural photographs are near -2.

    python benchmarks/maco.py            # full: 256 steps, 8 units per layer (a few minutes on 2 CPU cores)
    python benchmarks/maco.py --smoke    # under a minute on a CPU: fewer steps, units, images
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loupe.pipeline.featurevis import RenderSettings, render_units  # noqa: E402
from loupe.pipeline.featurevis.spectrum import MagnitudeSpectrum, spectrum_slope  # noqa: E402
from loupe.pipeline.models import LoadedModel, Preprocessing, load_model  # noqa: E402

SHARED = REPO.parent / "shared"
VIT_SIZE = 64
VIT_LAYERS = ("encoder.layers.encoder_layer_1.mlp.1", "encoder.layers.encoder_layer_3")
MOBILENET_LAYERS = ("features.3", "features.7", "features.14")
ORIENTATIONS = (0.0, 45.0, 90.0, 135.0)
TINTS = (((1.0, 0.55, 0.2), (0.25, 0.2, 0.5)), ((0.2, 0.6, 1.0), (0.45, 0.35, 0.1)))  # (bright, dark) per scheme


@dataclass(frozen=True)
class Plan:
    """How much work each part does; --smoke shrinks everything but keeps every figure."""

    steps: int
    units: int
    size: int  # MobileNetV2 render size
    train_steps: int
    train_batch: int
    dataset_images: int  # images for each magnitude spectrum and dataset slope
    mobilenet_layers: tuple[str, ...]


FULL = Plan(steps=256, units=8, size=128, train_steps=250, train_batch=64, dataset_images=256,
            mobilenet_layers=MOBILENET_LAYERS)
SMOKE = Plan(steps=48, units=3, size=64, train_steps=80, train_batch=48, dataset_images=32,
             mobilenet_layers=("features.7",))


def pink_noise(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """`[n, 1, size, size]` noise with amplitude ~ 1/f (power ~ 1/f^2, like photographs), unit std."""
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    amplitude = 1.0 / torch.sqrt(fx * fx + fy * fy).clamp_min(1.0 / size)
    phase = torch.rand(n, 1, size, size // 2 + 1, generator=generator) * 2 * math.pi
    noise = torch.fft.irfft2(torch.polar(amplitude.expand(n, 1, -1, -1), phase), s=(size, size))
    return (noise - noise.mean(dim=(2, 3), keepdim=True)) / noise.std(dim=(2, 3), keepdim=True)


def synthetic_batch(n: int, generator: torch.Generator, size: int = VIT_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Pictures in [0, 1] `[n, 3, size, size]` and labels: 8 classes = 4 grating orientations x 2 colour
    schemes, each grating in a soft disc at a random place over 1/f noise."""
    labels = torch.randint(0, 2 * len(ORIENTATIONS), (n,), generator=generator)
    angle = torch.tensor(ORIENTATIONS)[labels % len(ORIENTATIONS)] * math.pi / 180
    angle = angle + (torch.rand(n, generator=generator) - 0.5) * 0.2
    cycles = 4 + 4 * torch.rand(n, generator=generator)
    grid = torch.linspace(-0.5, 0.5, size)
    y, x = torch.meshgrid(grid, grid, indexing="ij")
    along = x[None] * torch.cos(angle)[:, None, None] + y[None] * torch.sin(angle)[:, None, None]
    shift = torch.rand(n, 1, 1, generator=generator) * 2 * math.pi
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * cycles[:, None, None] * along + shift)
    centre = (torch.rand(n, 2, generator=generator) - 0.5) * 0.5
    radius = 0.2 + 0.15 * torch.rand(n, generator=generator)
    dist = torch.sqrt((x[None] - centre[:, 0, None, None]) ** 2 + (y[None] - centre[:, 1, None, None]) ** 2)
    disc = torch.sigmoid((radius[:, None, None] - dist) * 40)[:, None]
    bright, dark = (torch.tensor(TINTS)[labels // len(ORIENTATIONS), i][:, :, None, None] for i in (0, 1))
    grating = dark + (bright - dark) * stripes[:, None]
    background = 0.45 + 0.12 * pink_noise(n, size, generator).expand(-1, 3, -1, -1) \
        + 0.05 * pink_noise(n * 3, size, generator).reshape(n, 3, size, size)
    return (disc * grating + (1 - disc) * background).clamp(0, 1), labels


def as_uint8(pictures: torch.Tensor) -> np.ndarray:
    """`[n, 3, H, W]` in [0, 1] -> uint8 `[n, H, W, 3]`, the layout renders are stored in."""
    return (pictures * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def train_vit(plan: Plan) -> tuple[LoadedModel, float, float]:
    """A 4-block ViT trained on synthetic pictures: (model, held-out accuracy, seconds)."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    net = VisionTransformer(image_size=VIT_SIZE, patch_size=8, num_layers=4, num_heads=4, hidden_dim=48,
                            mlp_dim=96, num_classes=2 * len(ORIENTATIONS))
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=plan.train_steps)
    start = time.perf_counter()
    net.train()
    for _ in range(plan.train_steps):
        pictures, labels = synthetic_batch(plan.train_batch, generator)
        loss = F.cross_entropy(net((pictures - 0.5) / 0.5), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - start
    net.eval()
    pictures, labels = synthetic_batch(512, torch.Generator().manual_seed(1))
    with torch.no_grad():
        accuracy = float((net((pictures - 0.5) / 0.5).argmax(1) == labels).float().mean())
    preprocessing = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=VIT_SIZE)
    return LoadedModel.from_module(net, preprocessing=preprocessing, device="cpu", name="synthetic_vit"), accuracy, seconds


def imagenet_sample(n: int, size: int) -> np.ndarray | None:
    """The first `n` images of ../shared/datasets/imagenet-sample, shorter side to `size`, centre crop."""
    from PIL import Image

    folder = SHARED / "datasets" / "imagenet-sample"
    files = sorted(folder.glob("*.jpg"))[:n] if folder.is_dir() else []
    if not files:
        return None
    pictures = []
    for path in files:
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = size / min(image.size)
            image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                                 Image.BILINEAR)
            left, top = (image.width - size) // 2, (image.height - size) // 2
            pictures.append(np.asarray(image.crop((left, top, left + size, top + size))))
    return np.stack(pictures)


def mobilenet() -> LoadedModel | None:
    """The ImageNet MobileNetV2: the bundled weights, else the shared file, else None."""
    try:
        return load_model("torchvision:mobilenet_v2", "bundled:mobilenet_v2_imagenet", device="cpu")
    except Exception as bundled_error:  # a wheel without the bundled file: try the shared copy
        path = SHARED / "models" / "mobilenet_v2_imagenet_tflite.pth"
        if not path.is_file():
            print(f"  MobileNetV2 skipped: no bundled weights ({bundled_error}) and no {path}")
            return None
        return load_model("torchvision:mobilenet_v2", str(path), device="cpu",
                          preprocessing=Preprocessing.from_range(-1, 1))


def magnitude_of(images: np.ndarray) -> np.ndarray:
    """MACO's magnitude: the dataset's mean Fourier magnitude at the images' size."""
    spectrum = MagnitudeSpectrum(images.shape[1], images.shape[2])
    spectrum.add(images.transpose(0, 3, 1, 2))
    return spectrum.result()


@dataclass(frozen=True)
class Row:
    model: str
    layer: str
    lucid_activation: float
    maco_activation: float
    lucid_slope: float
    maco_slope: float
    dataset_slope: float
    seconds: float


def compare_layer(lm: LoadedModel, model_name: str, layer: str, plan: Plan, size: int, magnitude: np.ndarray,
                  dataset_slope: float) -> Row:
    """Render the layer's first units with both parameterizations, same everything else."""
    units = list(range(min(plan.units, lm.layer(layer).channels)))
    start = time.perf_counter()
    settings = RenderSettings(size=size, steps=plan.steps, threads=torch.get_num_threads())
    lucid = render_units(lm, layer, units, settings=settings, seed=0)
    maco = render_units(lm, layer, units, settings=replace(settings, param="maco"), magnitude=magnitude, seed=0)
    return Row(model_name, layer, float(lucid.activations.mean()), float(maco.activations.mean()),
               spectrum_slope(lucid.images), spectrum_slope(maco.images), dataset_slope,
               time.perf_counter() - start)


def vit_rows(plan: Plan) -> list[Row]:
    lm, accuracy, seconds = train_vit(plan)
    print(f"  (a) synthetic ViT: {plan.train_steps} steps of batch {plan.train_batch} in {seconds:.1f} s, "
          f"held-out accuracy {accuracy:.1%} over 8 classes (chance 12.5%)", flush=True)
    images = as_uint8(synthetic_batch(plan.dataset_images, torch.Generator().manual_seed(2))[0])
    magnitude, slope = magnitude_of(images), spectrum_slope(images)
    return [compare_layer(lm, "synthetic ViT", layer, plan, VIT_SIZE, magnitude, slope) for layer in VIT_LAYERS]


def mobilenet_rows(plan: Plan) -> list[Row]:
    images = imagenet_sample(plan.dataset_images, plan.size)
    if images is None:
        print(f"  (b) MobileNetV2 skipped: no images in {SHARED / 'datasets' / 'imagenet-sample'}")
        return []
    lm = mobilenet()
    if lm is None:
        return []
    print(f"  (b) ImageNet MobileNetV2 ({lm.weights}); spectrum from {len(images)} imagenet-sample images "
          f"at {plan.size} px", flush=True)
    magnitude, slope = magnitude_of(images), spectrum_slope(images)
    return [compare_layer(lm, "MobileNetV2", layer, plan, plan.size, magnitude, slope)
            for layer in plan.mobilenet_layers]


def print_table(rows: list[Row]) -> None:
    header = (f"{'model':<14} {'layer':<36} {'act lucid':>9} {'act maco':>9} {'maco/lucid':>10} "
              f"{'slope lucid':>11} {'slope maco':>10} {'slope data':>10} {'s':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = r.maco_activation / r.lucid_activation if r.lucid_activation else float("nan")
        print(f"{r.model:<14} {r.layer:<36} {r.lucid_activation:>9.3f} {r.maco_activation:>9.3f} {ratio:>10.2f} "
              f"{r.lucid_slope:>11.2f} {r.maco_slope:>10.2f} {r.dataset_slope:>10.2f} {r.seconds:>6.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a quick run (under a minute on a CPU)")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"MACO vs Lucid ({'smoke' if args.smoke else 'full'}): {plan.units} units per layer, {plan.steps} steps, "
          f"seed 0; threads {torch.get_num_threads()}")
    print("The arms differ only in RenderSettings.param: lucid = FFT image in decorrelated colour through a "
          "sigmoid; maco = phase only, magnitude fixed at the dataset's mean Fourier magnitude (decorrelated "
          "colour). Same units, steps, "
          "Adam lr 0.05, standard transforms and per-unit transform draws, redirected ReLU (16 steps), measurement.",
          flush=True)
    rows = vit_rows(plan) + mobilenet_rows(plan)
    print()
    print_table(rows)
    print()
    print("act: the unit's mean over positions on the final uint8 render, averaged over units; slope: log power vs "
          "log frequency of the radially averaged power spectrum (natural photographs ~ -2; 0 is white noise).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
