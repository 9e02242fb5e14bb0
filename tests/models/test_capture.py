"""Activations are read exactly as each module returned them, and hooks never outlive a call."""

import pytest
import torch
from torch import nn

from loupe.pipeline.models import LoadedModel, Preprocessing, capture, load_model


class InPlaceNet(nn.Module):
    """conv -> in-place relu on the conv's own output -> conv: the case naive hooks get wrong."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        torch.relu_(y)
        return self.conv2(y)


def wrap(module):
    return LoadedModel.from_module(module, preprocessing=Preprocessing(input_size=16), device="cpu")


def naive_read(model, layer, images):
    seen = {}
    handle = model.module.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return seen["out"]


def test_conv_output_read_before_in_place_relu():
    torch.manual_seed(0)
    model = wrap(InPlaceNet())
    images = torch.rand(2, 3, 16, 16)
    with capture(model, ["conv"]) as cap:
        value = cap.run(images)["conv"]
    assert (value < 0).any()
    assert (naive_read(model, "conv", images) >= 0).all(), "naive hook should see post-ReLU values"
    expected = model.module.conv(model.normalize(images))
    assert torch.allclose(value, expected)


@pytest.mark.parametrize(
    "source, layer",
    [
        ("torchvision:resnet18", "bn1"),  # nn.ReLU(inplace=True) module after it
        ("torchvision:googlenet", "conv1.bn"),  # F.relu(x, inplace=True) inside BasicConv2d
        ("torchvision:mobilenet_v2", "features.0.1"),  # ReLU6(inplace=True)
        ("torchvision:resnet18", "layer1.0.bn2"),  # `out += identity` then in-place ReLU
    ],
)
def test_torchvision_pre_relu_layers_keep_negative_values(source, layer):
    model = load_model(source, "none")
    images = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), capture(model, [layer]) as cap:
        value = cap.run(images)[layer]
    assert (value < 0).any()
    assert (naive_read(model, layer, images) >= 0).all()


def test_googlenet_pre_relu_composite_is_lucid_mixed_pre_relu():
    model = load_model("torchvision:googlenet", "none")
    images = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), capture(model, ["inception4a_pre_relu", "inception4a"]) as cap:
        acts = cap.run(images)
    pre, post = acts["inception4a_pre_relu"], acts["inception4a"]
    assert (pre < 0).any()
    assert torch.allclose(pre.clamp(min=0), post)


def test_forward_stops_after_deepest_requested_layer():
    model = load_model("torchvision:resnet18", "none")
    assert "layer4" in model.catalog  # the catalog's own dry run happens before we start counting
    ran = []
    handle = model.module.layer4.register_forward_hook(lambda *a: ran.append("layer4"))
    try:
        with torch.no_grad(), capture(model, ["layer1", "layer2.0.conv1"]) as cap:
            acts = cap.run(torch.rand(1, 3, 64, 64))
    finally:
        handle.remove()
    assert set(acts) == {"layer1", "layer2.0.conv1"}
    assert ran == []


def test_captured_values_carry_gradients():
    torch.manual_seed(0)
    model = wrap(InPlaceNet())
    images = torch.rand(1, 3, 16, 16, requires_grad=True)
    with capture(model, ["conv"]) as cap:
        cap.run(images)["conv"][0, 3].mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def hook_count(module):
    return sum(len(m._forward_hooks) for m in module.modules())


def test_no_hook_left_behind_even_on_error():
    model = load_model("torchvision:resnet18", "none")
    before = hook_count(model.module)
    with pytest.raises(RuntimeError):
        with capture(model, ["layer2", "layer3.1.relu@1"]) as cap:
            cap.run(torch.rand(1, 4, 64, 64))  # wrong channel count fails inside the forward
    assert hook_count(model.module) == before
    with capture(model, ["layer2"]) as cap:
        cap.run(torch.rand(1, 3, 64, 64))
    assert hook_count(model.module) == before


def test_callback_mode_sees_every_layer_once():
    model = load_model("torchvision:resnet18", "none")
    seen = []
    with torch.no_grad(), capture(model, ["layer1", "layer3.1.relu@1"], on_output=lambda n, t: seen.append((n, t.shape))) as cap:
        assert cap.run(torch.rand(2, 3, 64, 64)) == {}
    assert [n for n, _ in seen] == ["layer1", "layer3.1.relu@1"]
    assert seen[1][1] == (2, 256, 4, 4)
