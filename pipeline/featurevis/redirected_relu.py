"""Lucid's redirected ReLU gradient, so units that start dead still get a signal.

A unit behind a ReLU whose input is negative everywhere for a random start image gets zero
gradient and never moves. Lucid's fix (lucid/misc/redirected_relu_grad.py): for each batch element
where the true ReLU gradient is zero everywhere, pass the incoming gradient through anyway, except
where it would push an already-negative input further down (for ReLU6 also: an input above 6
further up). Elements with any true gradient keep it. render_vis uses this for the first steps only.

torchvision applies ReLUs in three ways: `nn.ReLU`/`nn.ReLU6` modules (ReLU6 goes through
`F.hardtanh(x, 0, 6)`), functional calls such as GoogLeNet's `F.relu(x, inplace=True)`, and tensor
methods. A `TorchFunctionMode` sees all of them during the forward, in place or not, without
touching the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class _RedirectedClamp(torch.autograd.Function):
    """clamp(x, low, high) forward; Lucid's redirected gradient backward. `high` may be None (plain ReLU)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, low: float, high: float | None, inplace: bool) -> torch.Tensor:  # type: ignore[override]
        below = x < low
        if high is None:
            ctx.save_for_backward(below)
        else:
            ctx.save_for_backward(below, x > high)
        if inplace:
            ctx.mark_dirty(x)
            return x.clamp_(min=low, max=high)
        return x.clamp(min=low, max=high)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        below, *rest = ctx.saved_tensors
        above = rest[0] if rest else None
        clamped = below if above is None else below | above
        true_grad = grad.masked_fill(clamped, 0)
        rows = true_grad.reshape(true_grad.shape[0], -1) if grad.dim() >= 2 else true_grad.reshape(1, -1)
        has_signal = rows.ne(0).any(dim=1)
        # Elements where no gradient gets through: pass the incoming gradient, except where it would
        # push an input further outside the range. `grad` is d(loss)/d(output) for a loss being
        # minimized, so grad > 0 pushes the input down. Chosen per element with `where`, never by
        # asking the host whether any element is dead: no device synchronisation in the step loop.
        live = has_signal.reshape(-1, *([1] * (grad.dim() - 1))) if grad.dim() >= 2 else has_signal.reshape(())
        return torch.where(live, true_grad, _redirect(grad, below, above)), None, None, None


def _redirect(grad: torch.Tensor, below: torch.Tensor, above: torch.Tensor | None) -> torch.Tensor:
    blocked = below & (grad > 0)
    if above is not None:
        blocked |= above & (grad < 0)
    return grad.masked_fill(blocked, 0)


def redirected_relu(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    return _RedirectedClamp.apply(x, 0.0, None, inplace)


def redirected_relu6(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    return _RedirectedClamp.apply(x, 0.0, 6.0, inplace)


_RELU = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_INPLACE = {F.relu_, torch.relu_, torch.Tensor.relu_}
_HARDTANH = {F.hardtanh, F.relu6}
_HARDTANH_INPLACE = {F.hardtanh_}


def _arg(args: tuple, kwargs: dict, index: int, name: str, default):
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


class RedirectedReLUMode(TorchFunctionMode):
    """While active, every ReLU and ReLU6 (module, functional or method; in place or not) uses the redirected gradient.

    Only calls on tensors that take part in autograd are redirected; others run unchanged.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU or func in _RELU_INPLACE:
            x = args[0]
            if isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled():
                inplace = func in _RELU_INPLACE or bool(_arg(args, kwargs, 1, "inplace", False))
                return redirected_relu(x, inplace=inplace)
        elif func in _HARDTANH or func in _HARDTANH_INPLACE:
            x = args[0]
            if func is F.relu6:
                low, high = 0.0, 6.0
                inplace = bool(_arg(args, kwargs, 1, "inplace", False))
            else:
                low = float(_arg(args, kwargs, 1, "min_val", -1.0))
                high = float(_arg(args, kwargs, 2, "max_val", 1.0))
                inplace = func in _HARDTANH_INPLACE or bool(_arg(args, kwargs, 3, "inplace", False))
            # Only ReLU-like hardtanh (ReLU6 and friends) is a rectifier; tanh-like clamps are left alone.
            if low == 0.0 and isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled():
                return _RedirectedClamp.apply(x, low, high, inplace)
        return func(*args, **kwargs)


__all__ = ["RedirectedReLUMode", "redirected_relu", "redirected_relu6"]
