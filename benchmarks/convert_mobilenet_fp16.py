"""Re-create the bundled float16 MobileNetV2 from the float32 file in ../shared/models (reproducible).

    .venv/bin/python benchmarks/convert_mobilenet_fp16.py [SOURCE.pth] [DEST.pt]

Float tensors are halved (about 7 MB instead of 14 MB) so the wheel can ship them; integer
buffers (num_batches_tracked) stay as they are. The result is a plain tensor state dict that
`torch.load(weights_only=True)` reads and that loads strictly into the float32 torchvision model.
It prints the sha256 and the largest rounding error, for the README beside the file.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "models" / "mobilenet_v2_imagenet_tflite.pth"
DEST = ROOT / "pipeline" / "models" / "pretrained" / "mobilenet_v2_imagenet_fp16.pt"


def convert(source: Path, dest: Path) -> str:
    """Write the float16 state dict and return its sha256; fails if it does not load strictly."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    torchvision.models.mobilenet_v2(weights=None).load_state_dict(half, strict=True)
    worst = max(float((half[k].float() - v).abs().max()) for k, v in state.items() if v.is_floating_point() and v.numel())
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(half, dest)
    sha = hashlib.sha256(dest.read_bytes()).hexdigest()
    print(f"{dest}: {dest.stat().st_size:,} bytes, sha256 {sha}, {len(half)} tensors, max |fp16 - fp32| {worst:.3g}")
    return sha


if __name__ == "__main__":
    convert(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE, Path(sys.argv[2]) if len(sys.argv) > 2 else DEST)
