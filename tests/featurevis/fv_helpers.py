"""Tiny models and helpers for feature-visualization tests: real nn.Modules, small enough for 2 CPU cores."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from loupe.pipeline.featurevis.spectrum import MagnitudeSpectrum
from loupe.pipeline.models import LoadedModel, Preprocessing

IDENTITY = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=32)
CATEGORIES = [f"class{i}" for i in range(10)]


class CountCalls(nn.Module):
    """Identity that counts how often it runs: proves a forward stopped early."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


class FunctionalReLUBlock(nn.Module):
    """Conv + batch norm + functional in-place ReLU, like torchvision's GoogLeNet BasicConv2d."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class TinyNet(nn.Module):
    """conv/ReLU(in place) -> conv/BN/functional ReLU -> ReLU6 block -> pooled linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.block = FunctionalReLUBlock(8, 12)
        self.mid = nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU6(inplace=True))
        self.tail = CountCalls()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tail(self.mid(self.block(self.stem(x)))))


def make_tiny(seed: int = 0) -> LoadedModel:
    """TinyNet with batch-norm statistics measured on random images: non-trivial eval-mode
    normalization, and units that are neither dead nor always on."""
    torch.manual_seed(seed)
    net = TinyNet()
    batch_norms = [net.block.bn, net.mid[1]]
    with torch.no_grad():
        for bn in batch_norms:
            bn.momentum = None  # cumulative average over the calibration pass
            bn.weight.uniform_(0.8, 1.2)
            bn.bias.uniform_(-0.1, 0.1)
        net.train()
        net(torch.rand(64, 3, 32, 32))
    for bn in batch_norms:
        bn.momentum = 0.1
    return LoadedModel.from_module(net, preprocessing=IDENTITY, device="cpu", name="tiny", categories=CATEGORIES)


def hook_count(module: nn.Module) -> int:
    """Every forward / pre-forward / backward hook on the module tree."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in module.modules()
    )


def natural_magnitude(size: int = 24) -> np.ndarray:
    """The mean magnitude of smooth random pictures (a stand-in for a dataset's spectrum)."""
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.random((16, 3, 6, 6))).float()
    pictures = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    pictures = pictures + 0.05 * torch.from_numpy(rng.standard_normal((16, 3, size, size))).float()
    spectrum = MagnitudeSpectrum(size, size)
    spectrum.add((pictures.clamp(0, 1) * 255).round().to(torch.uint8))
    return spectrum.result()


def start_picture(size: int = 24) -> np.ndarray:
    """A uint8 [1, size, size, 3] picture with structure in every colour channel."""
    yy, xx = np.mgrid[0:size, 0:size]
    rgb = [128 + 100 * np.sin(xx / 3.0), 128 + 80 * np.cos(yy / 4.0), 128 + 90 * np.sin((xx + yy) / 5.0)]
    return np.stack(rgb, -1).round().astype(np.uint8)[None]
