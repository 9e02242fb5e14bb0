"""Render numerics that do not depend on where a render runs, only on the hardware and software.

A render is 512 steps of gradient ascent, so a last-bit difference in one step's sums grows into
visibly different pictures (the in-process and Ray executors once differed by 27 grey levels for
the same work item). On CPU the summation order of convolutions and matrix products depends on
the intra-op thread count, so `fixed_numerics` runs every render with the settings' thread count
(restoring the caller's afterwards: scans keep all their threads); on CUDA it also asks cuDNN for
deterministic algorithms and turns off its per-shape autotuning, whose pick varies from run to run.

What may still differ, so the same work item can give different bytes:
- CPU vs GPU, and between CPU instruction sets (AVX2 vs AVX-512 kernels sum in other orders);
- between GPU models (other kernels; TF32 convolutions on Ampere and newer, which torch enables
  for cuDNN by default, but not on older cards);
- cuDNN, cuBLAS, oneDNN/MKL and torch versions (other algorithms and kernels);
- precision "bf16" (autocast) vs "fp32".
Same hardware and the same software stack give the same bytes whichever executor runs the item.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def fixed_numerics(threads: int) -> Iterator[None]:
    """Run the body with `threads` intra-op CPU threads and deterministic cuDNN, then restore both."""
    cudnn = torch.backends.cudnn
    saved = (torch.get_num_threads(), cudnn.deterministic, cudnn.benchmark)
    torch.set_num_threads(int(threads))
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        cudnn.deterministic, cudnn.benchmark = saved[1], saved[2]


__all__ = ["fixed_numerics"]
