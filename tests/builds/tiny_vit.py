"""A tiny torchvision VisionTransformer (32 px, 4 x 4 patches of 8 px): token layers in seconds."""

from __future__ import annotations

import torch
from torchvision.models import VisionTransformer


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=10)
