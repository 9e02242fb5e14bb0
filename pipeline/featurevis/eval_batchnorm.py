"""Eval-mode batch norm as one fused multiply-add while rendering.

In eval mode a batch norm is a fixed per-channel affine map, but `F.batch_norm`'s CPU backward
still pays for the general kernel: on GoogLeNet and MobileNetV2 it costs about as much as the
convolutions' own backward pass. While this mode is active, every eval-mode `F.batch_norm` call
(so every `nn.BatchNorm*d` module, whose hooks still fire as usual) computes `x * scale + shift`
instead: the same values up to float rounding, a much cheaper gradient. Training-mode calls are
left alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_NAMES = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_DEFAULTS = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5}


class AffineBatchNormMode(TorchFunctionMode):
    """Replace eval-mode `F.batch_norm` by an equivalent `addcmul` for the duration."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            bound = {**_DEFAULTS, **dict(zip(_NAMES, args)), **kwargs}
            mean, var = bound["running_mean"], bound["running_var"]
            if not bound["training"] and mean is not None and var is not None:
                return _affine(bound["input"], mean, var, bound["weight"], bound["bias"], bound["eps"])
        return func(*args, **kwargs)


def _affine(x: torch.Tensor, mean, var, weight, bias, eps: float) -> torch.Tensor:
    scale = torch.rsqrt(var + eps)
    shift = -mean * scale
    if weight is not None:
        scale = scale * weight
        shift = shift * weight
    if bias is not None:
        shift = shift + bias
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.view(shape).to(x.dtype), x, scale.view(shape).to(x.dtype))


__all__ = ["AffineBatchNormMode"]
