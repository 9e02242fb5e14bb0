"""Objectives: values on hand-made activations, the algebra, batch indexing and up-front validation."""

import math

import pytest
import torch

from loupe.pipeline.errors import LayerError, LoupeError, UnitError
from loupe.pipeline.featurevis import objectives as O
from loupe.pipeline.featurevis.objectives import Activations


def acts(**layers) -> Activations:
    return Activations(layers, categories=["cat", "dog", "eel"])


@pytest.fixture
def T() -> Activations:
    g = torch.Generator().manual_seed(0)
    return acts(
        conv=torch.randn(3, 4, 5, 6, generator=g),  # NCHW: 3 images, 4 channels, 5 rows, 6 columns
        logits=torch.randn(3, 3, generator=g),
        input=torch.rand(3, 3, 8, 8, generator=g),
    )


def test_channel_is_the_mean_over_batch_and_positions(T):
    assert torch.allclose(O.channel("conv", 2)(T), T("conv")[:, 2].mean())


def test_batch_index_picks_one_element(T):
    assert torch.allclose(O.channel("conv", 2, batch=1)(T), T("conv")[1, 2].mean())
    assert torch.allclose(O.neuron("conv", 0, batch=2)(T), T("conv")[2, 0, 2, 3])
    assert torch.allclose(O.deepdream("conv", batch=0)(T), (T("conv")[0] ** 2).mean())
    assert torch.allclose(O.class_logit("logits", 1, batch=2)(T), T("logits")[2, 1])
    with pytest.raises(LoupeError, match="batch element 5"):
        O.channel("conv", 0, batch=5)(T)


def test_neuron_defaults_to_the_centre_and_x_is_the_column(T):
    t = T("conv")
    assert torch.allclose(O.neuron("conv", 1)(T), t[:, 1, 5 // 2, 6 // 2].sum())
    assert torch.allclose(O.neuron("conv", 1, x=5, y=0)(T), t[:, 1, 0, 5].sum())
    with pytest.raises(LoupeError, match="outside"):
        O.neuron("conv", 1, x=6)(T)


def test_token_layers_use_the_last_dimension_for_channels():
    t = torch.randn(2, 7, 5)  # NLC: 2 sequences, 7 tokens, 5 channels
    T = Activations({"tokens": t}, layouts={"tokens": "NLC"})
    assert torch.allclose(O.channel("tokens", 4)(T), t[..., 4].mean())
    assert torch.allclose(O.neuron("tokens", 4, x=2)(T), t[:, 2, 4].sum())
    assert torch.allclose(O.neuron("tokens", 4)(T), t[:, 3, 4].sum())


def test_algebra_combines_values_and_layers(T):
    a, b = O.channel("conv", 0), O.class_logit("logits", 2)
    va, vb = a(T), b(T)
    assert torch.allclose((a + b)(T), va + vb)
    assert torch.allclose((a - b)(T), va - vb)
    assert torch.allclose((-a)(T), -va)
    assert torch.allclose((2 * a)(T), 2 * va)
    assert torch.allclose((a * 3)(T), 3 * va)
    assert torch.allclose((a / 4)(T), va / 4)
    assert torch.allclose((a + 1.5)(T), va + 1.5)
    assert torch.allclose((1 - a)(T), 1 - va)
    assert torch.allclose(sum([a, b, a])(T), 2 * va + vb)
    assert torch.allclose(O.Objective.sum([a, b, "conv:3"])(T), va + vb + T("conv")[:, 3].mean())
    assert (a - 1e2 * O.diversity("conv") + b).layers == {"conv", "logits"}
    assert (a - O.L1()).layers == {"conv", "input"}


def test_string_means_channel(T):
    obj = O.as_objective("conv:3")
    assert obj.layers == {"conv"}
    assert torch.allclose(obj(T), O.channel("conv", 3)(T))
    with pytest.raises(UnitError, match="layer:unit"):
        O.as_objective("conv3")
    with pytest.raises(UnitError, match="not an integer"):
        O.as_objective("conv:x")
    with pytest.raises(TypeError, match="Objective"):
        O.as_objective(42)


def test_direction_and_cosine_power(T):
    vec = torch.tensor([1.0, -2.0, 0.5, 0.0])
    t = T("conv").movedim(1, -1)
    dot = (t * vec).sum(-1)
    assert torch.allclose(O.direction("conv", vec)(T), dot.mean())
    cos = dot / (1e-4 + t.norm(dim=-1)) / (1e-4 + vec.norm())
    expected = (dot * cos.clamp(min=0.1) ** 2).mean()
    assert torch.allclose(O.direction("conv", vec, cossim_pow=2)(T), expected)
    centre = t[:, 2, 3]
    assert torch.allclose(O.direction_neuron("conv", vec)(T), (centre * vec).sum(-1).mean())
    assert torch.allclose(O.direction_neuron("conv", vec, x=0, y=4, batch=1)(T), (t[1, 4, 0] * vec).sum())
    with pytest.raises(LoupeError, match="4 channels"):
        O.direction("conv", [1.0, 2.0])(T)


def test_class_logit_by_index_and_by_name(T):
    assert torch.allclose(O.class_logit("logits", "dog")(T), T("logits")[:, 1].sum())
    with pytest.raises(LoupeError, match="unknown class 'dgo'.*dog"):
        O.class_logit("logits", "dgo")(T)


def test_diversity_is_high_for_identical_images_and_lower_for_different_ones():
    same = torch.randn(1, 4, 5, 5).expand(3, -1, -1, -1)
    different = torch.randn(3, 4, 5, 5)
    d_same = O.diversity("x")(acts(x=same))
    d_diff = O.diversity("x")(acts(x=different))
    assert math.isclose(float(d_same), 2.0, rel_tol=1e-5)  # (N - 1) * cosine 1
    assert float(d_diff) < float(d_same)


def test_each_element_its_own_unit(T):
    channels = [2, 0, 3]
    conv = T("conv")
    means = torch.stack([conv[i, c].mean() for i, c in enumerate(channels)])
    assert torch.allclose(O.channel_values(T, "conv", channels), means)
    assert torch.allclose(O.each_channel("conv", channels)(T), means.sum())
    centre = torch.stack([conv[i, c, 2, 3] for i, c in enumerate(channels)])
    assert torch.equal(O.neuron_values(T, "conv", channels), centre)
    assert torch.allclose(O.each_neuron("conv", channels)(T), centre.sum())
    assert torch.equal(O.neuron_values(T, "conv", channels, x=1, y=4), conv[[0, 1, 2], channels, 4, 1])
    with pytest.raises(LoupeError, match="2 channels given for a batch of 3 images"):
        O.each_channel("conv", [0, 1])(T)


def test_each_channel_gradients_stay_in_their_element(T):
    x = T("conv").clone().requires_grad_(True)
    O.each_channel("conv", [1, 1, 2])(acts(conv=x)).backward()
    touched = (x.grad != 0).flatten(2).any(-1)  # [element, channel]
    assert touched.tolist() == [[False, True, False, False], [False, True, False, False], [False, False, True, False]]


def test_diversity_sets_are_scored_separately():
    x = torch.randn(4, 4, 3, 3)
    x[2:] = x[2]  # the second set holds two identical images
    both = O.diversity("x", sets=2)(acts(x=x))
    first, second = (O.diversity("x")(acts(x=x[k : k + 2])) for k in (0, 2))
    assert math.isclose(float(second), 1.0, rel_tol=1e-5)  # (N - 1) * cosine 1
    assert torch.allclose(both, first + second)
    with pytest.raises(LoupeError, match="does not split into 3 equal sets"):
        O.diversity("x", sets=3)(acts(x=x))


def test_alignment_and_channel_interpolate():
    t = torch.zeros(3, 2, 4, 4)
    t[1] += 1.0
    alignment = O.alignment("x", decay_ratio=2)(acts(x=t))
    assert math.isclose(float(alignment), -(1 / 2 + 1 / 2 + 0 / 4), rel_tol=1e-6)
    a = torch.zeros(3, 2, 4, 4)
    a[:, 0] = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
    a[:, 1] = 10.0
    value = O.channel_interpolate("x", 0, "x", 1)(acts(x=a))
    assert math.isclose(float(value), (1 * 1 + 0.5 * 2 + 0.5 * 10 + 1 * 10), rel_tol=1e-6)


def test_input_regularizers():
    x = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])  # 1 image, 1 channel, 2x2
    T = acts(input=x)
    assert float(O.L1(constant=0.5)(T)) == pytest.approx(2.0)
    assert float(O.L2()(T)) == pytest.approx(math.sqrt(3 + 1e-6))
    assert float(O.total_variation()(T)) == pytest.approx(2.0)
    flat = acts(input=torch.full((1, 3, 6, 6), 0.3))
    assert float(O.blur()(flat)) == pytest.approx(0.0, abs=1e-10)
    assert float(O.blur()(acts(input=torch.rand(1, 3, 6, 6)))) > 0


def test_validate_names_the_culprit_before_any_work(tiny):
    O.channel("mid.2", 15).validate(tiny)
    with pytest.raises(UnitError, match="out of range for layer mid.2"):
        O.channel("mid.2", 16).validate(tiny)
    with pytest.raises(LayerError, match="unknown layer 'mid.3'"):
        (O.channel("stem.0", 0) + O.deepdream("mid.3")).validate(tiny)
    with pytest.raises(LoupeError, match="unknown class"):
        O.class_logit("logits", "class99").validate(tiny)
    O.class_logit("logits", "class9").validate(tiny)
    with pytest.raises(LoupeError, match="3 values but layer mid.2 has 16"):
        O.direction("mid.2", [1.0, 2.0, 3.0]).validate(tiny)


def test_each_distance_is_each_images_own_mean_squared_distance():
    image = torch.rand(3, 3, 4, 4, requires_grad=True)
    targets = torch.rand(3, 3, 4, 4)
    T = Activations({"input": image})
    value = O.each_distance(targets)(T)
    assert torch.allclose(value, ((image - targets) ** 2).flatten(1).mean(1).sum())
    value.backward()
    assert torch.allclose(image.grad, 2 * (image - targets).detach() / 48)  # element i's gradient: its own target
    with pytest.raises(LoupeError, match="each_distance"):
        O.each_distance(targets[:2])(T)
