"""Eval-mode batch norm as a multiply-add: same values and gradients; training mode untouched."""

import torch
from torch import nn

from loupe.pipeline.featurevis.eval_batchnorm import AffineBatchNormMode


def calibrated_bn(affine: bool = True) -> nn.BatchNorm2d:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5, affine=affine)
    bn.train()
    with torch.no_grad():
        bn(torch.randn(16, 5, 4, 4) * 3 + 1)
        if affine:
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
    return bn.eval()


def test_same_values_and_gradients_in_eval_mode():
    for affine in (True, False):
        bn = calibrated_bn(affine)
        x = torch.randn(2, 5, 6, 6, requires_grad=True)
        reference = bn(x)
        (grad_ref,) = torch.autograd.grad(reference.square().sum(), x)
        with AffineBatchNormMode():
            fast = bn(x)
        (grad_fast,) = torch.autograd.grad(fast.square().sum(), x)
        assert torch.allclose(fast, reference, atol=1e-5)
        assert torch.allclose(grad_fast, grad_ref, atol=1e-4)
        assert fast.grad_fn.name() != reference.grad_fn.name()  # a different (cheaper) kernel ran


def test_training_mode_and_hooks_are_left_alone():
    bn = calibrated_bn().train()
    seen = []
    handle = bn.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    before = bn.running_mean.clone()
    with AffineBatchNormMode():
        out = bn(torch.randn(4, 5, 3, 3) + 5)
    handle.remove()
    assert not torch.equal(bn.running_mean, before)  # statistics still updated: the real kernel ran
    assert abs(float(out.detach().mean())) < 0.5 and seen == [out.shape]
