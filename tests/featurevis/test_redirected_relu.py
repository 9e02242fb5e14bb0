"""Lucid's redirected ReLU gradient: every way torchvision applies a ReLU, in place or not."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loupe.pipeline.featurevis.redirected_relu import RedirectedReLUMode

# Row 0 is all below zero (a dead element); row 1 has one live value.
X = [[-1.0, -2.0, -0.5], [1.0, -1.0, -3.0]]

RELUS = {
    "nn.ReLU": nn.ReLU(),
    "nn.ReLU(inplace)": nn.ReLU(inplace=True),
    "F.relu(inplace)": lambda y: F.relu(y, inplace=True),
    "F.relu": F.relu,
    "torch.relu": torch.relu,
    "torch.relu_": torch.relu_,
    "Tensor.relu_": lambda y: y.relu_(),
    "Tensor.relu": lambda y: y.relu(),
    "nn.ReLU6(inplace)": nn.ReLU6(inplace=True),
    "F.relu6": F.relu6,
    "F.hardtanh_(0, 6)": lambda y: F.hardtanh_(y, 0.0, 6.0),
}


def grad_through(fn, x_values, upstream: float, redirect: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor(x_values, requires_grad=True)
    if redirect:
        with RedirectedReLUMode():
            out = fn(x * 1.0)  # a non-leaf, as inside a network (in-place ops need one)
    else:
        out = fn(x * 1.0)
    (out * upstream).sum().backward()  # upstream = d(loss)/d(out) for a loss being minimized
    return out.detach(), x.grad


@pytest.mark.parametrize("name", list(RELUS))
def test_dead_elements_get_the_redirected_gradient(name):
    fn = RELUS[name]
    out_plain, grad_plain = grad_through(fn, X, -1.0, redirect=False)
    out, grad = grad_through(fn, X, -1.0, redirect=True)
    assert torch.equal(out, out_plain)  # same forward values
    assert grad_plain[0].abs().sum() == 0  # plain ReLU: the dead element never moves
    assert torch.equal(grad[0], torch.full((3,), -1.0))  # redirected: pushed up (loss decreases)
    assert torch.equal(grad[1], grad_plain[1])  # a live element keeps its true gradient


@pytest.mark.parametrize("name", ["nn.ReLU(inplace)", "F.relu6"])
def test_no_push_further_into_the_dead_zone(name):
    _, grad = grad_through(RELUS[name], X, +1.0, redirect=True)
    assert grad[0].abs().sum() == 0  # gradient would lower already-negative inputs: blocked


def test_relu6_redirects_above_six_downwards_only():
    values = [[7.0, 8.0, -1.0]]
    _, down = grad_through(nn.ReLU6(), values, +1.0, redirect=True)  # pushes inputs down
    assert torch.equal(down[0], torch.tensor([1.0, 1.0, 0.0]))
    _, up = grad_through(nn.ReLU6(), values, -1.0, redirect=True)  # pushes inputs up
    assert torch.equal(up[0], torch.tensor([0.0, 0.0, -1.0]))


def test_tanh_like_hardtanh_and_the_outside_world_are_untouched():
    x = torch.tensor([[-3.0, 3.0]], requires_grad=True)
    with RedirectedReLUMode():
        F.hardtanh(x * 1.0).sum().backward()
    assert x.grad.abs().sum() == 0
    _, grad = grad_through(nn.ReLU(), X, -1.0, redirect=False)
    assert grad[0].abs().sum() == 0


def test_googlenet_basic_conv_with_functional_inplace_relu():
    from torchvision.models.googlenet import BasicConv2d

    torch.manual_seed(0)
    block = BasicConv2d(3, 4, kernel_size=3).eval()
    with torch.no_grad():
        block.bn.bias.fill_(-100.0)  # every output dead
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    (-block(x).mean()).backward()
    assert x.grad.abs().sum() == 0
    x.grad = None
    with RedirectedReLUMode():
        out = block(x)
    (-out.mean()).backward()
    assert x.grad[0].abs().sum() > 0 and x.grad[1].abs().sum() > 0
