"""Objectives: what an image should make the network do, composable as in Lucid.

An `Objective` maps the activations of one forward pass to a scalar to *maximize*. Objectives add,
subtract, negate, scale by numbers (`*`, `/`) and sum over lists (`sum(objs)` or
`Objective.sum(objs)`), and each one knows which layers it reads, so render_vis runs the model
only up to the deepest of them. A string `"layer:unit"` means `channel(layer, unit)`.

Every primitive takes `batch=`: `None` applies it to the whole batch, an int to that batch
element only (how Lucid renders different objectives side by side in one batch). `each_channel`
and `each_neuron` give every element its own unit in one vectorized objective (what batched unit
renders need: the cost does not grow with the square of the batch). Reductions
follow Lucid: `channel`, `direction`, `deepdream` average over the batch and positions; `neuron`,
`class_logit`, `L1`, `total_variation` sum over the batch (as Lucid's optimizer sums a vector loss).

Activations arrive as the model produced them (channels in dim 1 for conv layers, last for
token layers: the catalog's layout). On token layers a neuron is one token; by default the
centre patch of a vision transformer's grid, not its class token (`centre_token`). The pseudo-layer `"input"` is the parameterized image
(RGB in [0, 1], before transforms), used by the L1/L2/TV/blur regularizers.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from loupe.pipeline.errors import LoupeError, UnitError

if TYPE_CHECKING:
    from loupe.pipeline.models import LoadedModel

INPUT = "input"


class Activations:
    """What an objective reads: `T("layer")` (Lucid style) or `T["layer"]`, plus the model's class names."""

    def __init__(
        self,
        values: Mapping[str, torch.Tensor],
        layouts: Mapping[str, str] | None = None,
        categories: Sequence[str] | None = None,
    ) -> None:
        self._values = dict(values)
        self._layouts = dict(layouts or {})
        self.categories = list(categories) if categories is not None else None

    def __call__(self, layer: str) -> torch.Tensor:
        return self[layer]

    def __getitem__(self, layer: str) -> torch.Tensor:
        try:
            return self._values[layer]
        except KeyError:
            raise LoupeError(
                f"objective read layer '{layer}', which was not captured; declare it in the objective's `layers`"
            ) from None

    def layout(self, layer: str) -> str:
        """The catalog layout, or one guessed from the rank (4-D NCHW, 3-D NLC tokens, 2-D NC)."""
        if layer in self._layouts:
            return self._layouts[layer]
        if layer == INPUT:
            return "NCHW"
        return {4: "NCHW", 3: "NLC", 2: "NC"}.get(self[layer].dim(), "NCHW")

    def channels_last(self, layer: str) -> torch.Tensor:
        """The layer as `[B, *positions, C]` whatever its layout: handy for objectives mixing channels."""
        t = self[layer]
        if self.layout(layer) == "NLC" or t.dim() == 2:
            return t
        return t.movedim(1, -1)


Check = Callable[["LoadedModel"], None]


class Objective:
    """A differentiable scalar to maximize, built from activations; composable with + - * / and sum."""

    def __init__(
        self,
        fn: Callable[[Activations], torch.Tensor],
        name: str = "objective",
        layers: Iterable[str] = (),
        checks: Iterable[Check] = (),
    ) -> None:
        self.fn = fn
        self.name = name
        self.layers = frozenset(layers)
        self.checks = tuple(checks)

    def __call__(self, T: Activations) -> torch.Tensor:
        return self.fn(T)

    def validate(self, model: "LoadedModel") -> None:
        """Raise a LoupeError naming the layer, unit or label at fault, before any optimization starts."""
        for layer in sorted(self.layers - {INPUT}):
            model.layer(layer)
        for check in self.checks:
            check(model)

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    # Algebra ---------------------------------------------------------------------------------
    def __add__(self, other: "Objective | float") -> "Objective":
        if isinstance(other, numbers.Number):
            return Objective(lambda T: self(T) + other, f"{self.name} + {other}", self.layers, self.checks)
        other = as_objective(other)
        return Objective(
            lambda T: self(T) + other(T), f"{self.name} + {other.name}",
            self.layers | other.layers, self.checks + other.checks,
        )

    def __radd__(self, other: "Objective | float") -> "Objective":
        if isinstance(other, numbers.Number) and other == 0:
            return self  # makes the builtin sum() work
        return as_objective(other) + self if not isinstance(other, numbers.Number) else self + other

    def __neg__(self) -> "Objective":
        return Objective(lambda T: -self(T), f"-({self.name})", self.layers, self.checks)

    def __sub__(self, other: "Objective | float") -> "Objective":
        if isinstance(other, numbers.Number):
            return Objective(lambda T: self(T) - other, f"{self.name} - {other}", self.layers, self.checks)
        other = as_objective(other)
        return Objective(
            lambda T: self(T) - other(T), f"{self.name} - {other.name}",
            self.layers | other.layers, self.checks + other.checks,
        )

    def __rsub__(self, other: "Objective | float") -> "Objective":
        return (-self) + other

    def __mul__(self, other: float) -> "Objective":
        if isinstance(other, numbers.Number):
            return Objective(lambda T: other * self(T), f"{other} * {self.name}", self.layers, self.checks)
        if isinstance(other, Objective):
            return Objective(
                lambda T: self(T) * other(T), f"({self.name}) * ({other.name})",
                self.layers | other.layers, self.checks + other.checks,
            )
        return NotImplemented

    __rmul__ = __mul__

    def __truediv__(self, other: float) -> "Objective":
        if not isinstance(other, numbers.Number):
            return NotImplemented
        return Objective(lambda T: self(T) / other, f"{self.name} / {other}", self.layers, self.checks)

    @staticmethod
    def sum(objs: Iterable["Objective | str"]) -> "Objective":
        """Sum of several objectives (Lucid's `Objective.sum`)."""
        objs = [as_objective(o) for o in objs]
        if not objs:
            raise ValueError("Objective.sum needs at least one objective")
        total = objs[0]
        for o in objs[1:]:
            total = total + o
        return total


def parse_unit(text: str) -> tuple[str, int]:
    """`"features.10:37"` -> ("features.10", 37), with a clear error for anything else."""
    layer, sep, unit = str(text).rpartition(":")
    if not sep or not layer:
        raise UnitError(f"objective '{text}' is not of the form layer:unit (e.g. features.10:37)")
    try:
        return layer, int(unit)
    except ValueError:
        raise UnitError(f"objective '{text}': '{unit}' is not an integer unit index") from None


def as_objective(obj: "Objective | str") -> Objective:
    """Accept an Objective or a `"layer:unit"` string (the channel objective)."""
    if isinstance(obj, Objective):
        return obj
    if isinstance(obj, str):
        return channel(*parse_unit(obj))
    raise TypeError(
        f"expected an Objective or a 'layer:unit' string, got {type(obj).__name__}; "
        "wrap a custom function as objectives.Objective(fn, layers=[...])"
    )


# Helpers ----------------------------------------------------------------------------------------
def _unit_check(layer: str, unit: int) -> Check:
    def check(model: "LoadedModel") -> None:
        model.unit(f"{layer}:{unit}")

    return check


def _select(t: torch.Tensor, batch: int | None) -> torch.Tensor:
    if batch is None:
        return t
    if not -t.shape[0] <= batch < t.shape[0]:
        raise LoupeError(f"objective asks for batch element {batch}, but the batch has {t.shape[0]} images")
    return t[batch : batch + 1]


def _channel_of(T: Activations, layer: str, n: int, batch: int | None) -> torch.Tensor:
    """The activations of channel n as `[B, *positions]`."""
    return _select(T.channels_last(layer), batch)[..., n]


def _position(T: Activations, layer: str, x: int | None, y: int | None) -> tuple[int, ...]:
    """Index into the positions of a channels-last layer: (row, column) for maps, (token,) for sequences."""
    spatial = T.channels_last(layer).shape[1:-1]
    if len(spatial) == 2:
        h, w = spatial
        row = h // 2 if y is None else y
        col = w // 2 if x is None else x
        if not (0 <= row < h and 0 <= col < w):
            raise LoupeError(f"neuron position x={col}, y={row} is outside layer {layer}'s {h}x{w} map")
        return (row, col)
    if len(spatial) == 1:
        if y is not None:
            raise LoupeError(f"layer {layer} is a sequence: give the token index as x, not y")
        (length,) = spatial
        token = centre_token(length) if x is None else x
        if not 0 <= token < length:
            raise LoupeError(f"neuron position x={token} is outside layer {layer}'s {length} tokens")
        return (token,)
    if x is not None or y is not None:
        raise LoupeError(f"layer {layer} has no spatial positions; drop x and y")
    return ()


def centre_token(length: int) -> int:
    """The token a neuron objective reads by default in a sequence of `length` tokens.

    Vision transformers lay a g x g patch grid out row by row, after one class token (torchvision's
    and timm's ViT: length = 1 + g*g) or without one (length = g*g): the default is the patch at
    the grid's centre (row g // 2, column g // 2), never the class token, like a conv layer's centre
    neuron. Any other length (register tokens, text) falls back to the middle token, length // 2.
    """
    for lead in (1, 0):
        side = math.isqrt(max(length - lead, 0))
        if side >= 2 and side * side == length - lead:
            return lead + (side // 2) * side + side // 2
    return length // 2


def _as_vector(vec: torch.Tensor | Sequence[float]) -> torch.Tensor:
    v = torch.as_tensor(vec, dtype=torch.float32)
    if v.dim() != 1:
        raise ValueError(f"direction vectors must be 1-D (one value per channel), got shape {tuple(v.shape)}")
    return v


def _dot_cossim(x: torch.Tensor, vec: torch.Tensor, cossim_pow: float = 0.0) -> torch.Tensor:
    """Lucid's `_dot_cossim`: mean of x·v, optionally times max(0.1, cos(x, v))^cossim_pow."""
    vec = vec.to(x.device, x.dtype)
    if x.shape[-1] != vec.shape[0]:
        raise LoupeError(f"direction has {vec.shape[0]} values but the layer has {x.shape[-1]} channels")
    dot = (x * vec).sum(-1)
    if cossim_pow == 0:
        return dot.mean()
    eps = 1e-4
    cossim = dot / (eps + x.norm(dim=-1)) / (eps + vec.norm())
    return (dot * cossim.clamp(min=0.1) ** cossim_pow).mean()


def _direction_check(layer: str, vec: torch.Tensor) -> Check:
    def check(model: "LoadedModel") -> None:
        info = model.layer(layer)
        if info.channels != vec.shape[0]:
            raise LoupeError(f"direction has {vec.shape[0]} values but layer {layer} has {info.channels} channels")

    return check


# Objectives -------------------------------------------------------------------------------------
def channel(layer: str, n_channel: int, batch: int | None = None) -> Objective:
    """Mean activation of one channel over positions (and the batch, unless `batch` picks an element)."""
    n = int(n_channel)
    return Objective(
        lambda T: _channel_of(T, layer, n, batch).mean(),
        f"channel({layer}:{n})", [layer], [_unit_check(layer, n)],
    )


def neuron(layer: str, n_channel: int, x: int | None = None, y: int | None = None, batch: int | None = None) -> Objective:
    """One channel at one position: `x` is the column, `y` the row (default: the centre, `size // 2`).

    For token layers (NLC) `x` is the token index. Summed over the batch, as Lucid.
    """
    n = int(n_channel)

    def inner(T: Activations) -> torch.Tensor:
        t = _select(T.channels_last(layer), batch)
        return t[(slice(None), *_position(T, layer, x, y), n)].sum()

    return Objective(inner, f"neuron({layer}:{n}, x={x}, y={y})", [layer], [_unit_check(layer, n)])


def _element_channels(channels: Sequence[int], t: torch.Tensor) -> torch.Tensor:
    if len(channels) != t.shape[0]:
        raise LoupeError(f"{len(channels)} channels given for a batch of {t.shape[0]} images; give one per image")
    return torch.as_tensor(list(channels), device=t.device)


def channel_values(T: Activations, layer: str, channels: Sequence[int]) -> torch.Tensor:
    """`[B]`: element i's mean of its own channel `channels[i]` over positions."""
    t = T.channels_last(layer)
    flat = t.reshape(t.shape[0], -1, t.shape[-1])
    index = _element_channels(channels, t).view(-1, 1, 1).expand(-1, flat.shape[1], 1)
    return flat.gather(2, index).squeeze(2).mean(1)


def neuron_values(T: Activations, layer: str, channels: Sequence[int], x: int | None = None,
                  y: int | None = None) -> torch.Tensor:
    """`[B]`: element i's channel `channels[i]` at one position (default the centre, as `neuron`)."""
    t = T.channels_last(layer)
    at = t[(slice(None), *_position(T, layer, x, y))]
    return at.gather(1, _element_channels(channels, t).view(-1, 1)).squeeze(1)


def each_channel(layer: str, channels: Sequence[int]) -> Objective:
    """Element i maximizes its own channel `channels[i]` (its mean over positions); summed over the
    batch, so no element's gradient depends on another's."""
    chosen = [int(c) for c in channels]
    return Objective(
        lambda T: channel_values(T, layer, chosen).sum(), f"each_channel({layer})", [layer],
        [_unit_check(layer, c) for c in sorted(set(chosen))],
    )


def each_neuron(layer: str, channels: Sequence[int], x: int | None = None, y: int | None = None) -> Objective:
    """Element i maximizes its own channel `channels[i]` at one position (default the centre); summed."""
    chosen = [int(c) for c in channels]
    return Objective(
        lambda T: neuron_values(T, layer, chosen, x, y).sum(), f"each_neuron({layer}, x={x}, y={y})", [layer],
        [_unit_check(layer, c) for c in sorted(set(chosen))],
    )


def direction(layer: str, vec, batch: int | None = None, cossim_pow: float = 0.0) -> Objective:
    """Dot product of every position's activation vector with `vec` (optionally times cosine^cossim_pow), averaged."""
    v = _as_vector(vec)
    return Objective(
        lambda T: _dot_cossim(_select(T.channels_last(layer), batch), v, cossim_pow),
        f"direction({layer})", [layer], [_direction_check(layer, v)],
    )


def direction_neuron(
    layer: str, vec, batch: int | None = None, x: int | None = None, y: int | None = None, cossim_pow: float = 0.0
) -> Objective:
    """`direction` at a single position (default centre; x = column, y = row)."""
    v = _as_vector(vec)

    def inner(T: Activations) -> torch.Tensor:
        t = _select(T.channels_last(layer), batch)
        at = t[(slice(None), *_position(T, layer, x, y))]
        return _dot_cossim(at, v, cossim_pow)

    return Objective(inner, f"direction_neuron({layer})", [layer], [_direction_check(layer, v)])


def _each_dot_cossim(x: torch.Tensor, vecs: torch.Tensor, cossim_pow: float) -> torch.Tensor:
    """`[B]`: element i's x·v_i over its positions (x `[B, ..., C]`), times max(0.1, cos)^cossim_pow, averaged."""
    vecs = vecs.to(x.device, x.dtype)
    if vecs.shape != (x.shape[0], x.shape[-1]):
        raise LoupeError(f"{vecs.shape[0]} directions of {vecs.shape[1]} values given for a batch of {x.shape[0]} "
                         f"images of a {x.shape[-1]}-channel layer; give one direction per image")
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    dot = (flat * vecs[:, None, :]).sum(-1)
    if cossim_pow == 0:
        return dot.mean(1)
    eps = 1e-4
    cossim = dot / (eps + flat.norm(dim=-1)) / (eps + vecs.norm(dim=-1, keepdim=True))
    return (dot * cossim.clamp(min=0.1) ** cossim_pow).mean(1)


def _directions_check(layer: str, vecs: torch.Tensor) -> Check:
    def check(model: "LoadedModel") -> None:
        info = model.layer(layer)
        if vecs.ndim != 2 or info.channels != vecs.shape[1]:
            raise LoupeError(f"directions of shape {list(vecs.shape)} do not fit layer {layer} with {info.channels} channels")

    return check


def direction_values(T: Activations, layer: str, directions, cossim_pow: float = 0.0) -> torch.Tensor:
    """`[B]`: element i's dot product with its own direction `directions[i]`, averaged over positions."""
    return _each_dot_cossim(T.channels_last(layer), torch.as_tensor(directions, dtype=torch.float32), cossim_pow)


def direction_neuron_values(T: Activations, layer: str, directions, x: int | None = None, y: int | None = None,
                            cossim_pow: float = 0.0) -> torch.Tensor:
    """`[B]`: `direction_values` at one position (default the centre)."""
    at = T.channels_last(layer)[(slice(None), *_position(T, layer, x, y))]
    return _each_dot_cossim(at[:, None, :], torch.as_tensor(directions, dtype=torch.float32), cossim_pow)


def each_direction(layer: str, directions, cossim_pow: float = 0.0) -> Objective:
    """Element i maximizes its own direction `directions[i]` (Lucid's `direction`, batched over units,
    as for SAE latents or any basis); with `cossim_pow`, Activation Atlas's dot x cosine^pow."""
    vecs = torch.as_tensor(directions, dtype=torch.float32)
    return Objective(lambda T: direction_values(T, layer, vecs, cossim_pow).sum(),
                     f"each_direction({layer})", [layer], [_directions_check(layer, vecs)])


def each_direction_neuron(layer: str, directions, x: int | None = None, y: int | None = None,
                          cossim_pow: float = 0.0) -> Objective:
    """`each_direction` at one position (default the centre), like `direction_neuron`."""
    vecs = torch.as_tensor(directions, dtype=torch.float32)
    return Objective(lambda T: direction_neuron_values(T, layer, vecs, x, y, cossim_pow).sum(),
                     f"each_direction_neuron({layer})", [layer], [_directions_check(layer, vecs)])


def each_distance(targets: torch.Tensor, layer: str = INPUT) -> Objective:
    """Element i's mean squared difference from its own target `targets[i]` (the same shape as one
    element of `layer`, by default the image), summed over the batch: subtract `w * each_distance(starts)`
    to keep every image near its start picture (feature accentuation), each on its own."""
    targets = torch.as_tensor(targets, dtype=torch.float32)

    def inner(T: Activations) -> torch.Tensor:
        t = T(layer)
        if tuple(t.shape) != tuple(targets.shape):
            raise LoupeError(f"each_distance: targets of shape {list(targets.shape)} do not match {layer} "
                             f"of shape {list(t.shape)}")
        return ((t - targets.to(t.device, t.dtype)) ** 2).flatten(1).mean(1).sum()

    return Objective(inner, f"each_distance({layer})", [layer])


def deepdream(layer: str, batch: int | None = None) -> Objective:
    """Mean squared activation of a whole layer (DeepDream)."""
    return Objective(lambda T: (_select(T(layer), batch) ** 2).mean(), f"deepdream({layer})", [layer])


def class_logit(layer: str, label: int | str, batch: int | None = None) -> Objective:
    """The logit of one class, by index or by name (needs weights that carry category names).

    `layer` is usually `"logits"`, the model's output.
    """

    def index_of(categories: Sequence[str] | None) -> int:
        if isinstance(label, numbers.Integral):
            return int(label)
        if not categories:
            raise LoupeError(f"class '{label}' given by name, but the model's weights carry no category names")
        if label not in categories:
            from loupe.pipeline.errors import close_matches

            raise LoupeError(f"unknown class '{label}'{close_matches(str(label), categories)}")
        return list(categories).index(label)

    def check(model: "LoadedModel") -> None:
        n = index_of(model.categories)
        model.unit(f"{layer}:{n}")

    def inner(T: Activations) -> torch.Tensor:
        return _select(T.channels_last(layer), batch)[..., index_of(T.categories)].sum()

    return Objective(inner, f"class_logit({layer}, {label!r})", [layer], [check])


def diversity(layer: str, sets: int = 1) -> Objective:
    """Mean pairwise cosine similarity of the batch's Gram matrices at `layer` (Lucid); subtract it to diversify.

    `sets` splits the batch into that many equal runs of consecutive elements, each scored on its
    own and summed (several units' diversity sets in one batch).
    """

    def inner(T: Activations) -> torch.Tensor:
        t = T.channels_last(layer)
        if t.shape[0] % sets:
            raise LoupeError(f"diversity: a batch of {t.shape[0]} images does not split into {sets} equal sets")
        return _gram_similarity(t.reshape(sets, t.shape[0] // sets, -1, t.shape[-1])).sum()

    return Objective(inner, f"diversity({layer})", [layer])


def _gram_similarity(groups: torch.Tensor) -> torch.Tensor:
    """For `[G, N, positions, C]`, each group's sum over pairs i != j of <gram_i, gram_j> / N (normalized grams)."""
    g, n = groups.shape[:2]
    flat = groups.reshape(g * n, -1, groups.shape[-1])
    grams = torch.bmm(flat.transpose(1, 2), flat).reshape(g, n, -1)
    grams = F.normalize(grams, dim=-1, eps=1e-10)
    sims = torch.bmm(grams, grams.transpose(1, 2))  # [G, N, N]
    off_diagonal = sims.sum(dim=(1, 2)) - sims.diagonal(dim1=1, dim2=2).sum(-1)
    return off_diagonal / n


def alignment(layer: str, decay_ratio: float = 2.0) -> Objective:
    """Encourage neighbouring batch elements to activate alike (for interpolations), as Lucid."""

    def inner(T: Activations) -> torch.Tensor:
        t = T(layer)
        accum = t.new_zeros(())
        for d in (1, 2, 3, 4):
            for i in range(t.shape[0] - d):
                accum = accum + ((t[i] - t[i + d]) ** 2).mean() / decay_ratio**d
        return -accum

    return Objective(inner, f"alignment({layer})", [layer])


def channel_interpolate(layer1: str, n_channel1: int, layer2: str, n_channel2: int) -> Objective:
    """Blend from one channel (first batch element) to another (last) across the batch."""
    n1, n2 = int(n_channel1), int(n_channel2)

    def inner(T: Activations) -> torch.Tensor:
        a = T.channels_last(layer1)[..., n1]
        b = T.channels_last(layer2)[..., n2]
        batch_n = a.shape[0]
        weights = torch.linspace(0, 1, batch_n, device=a.device, dtype=a.dtype) if batch_n > 1 else a.new_zeros(1)
        a_means = a.reshape(batch_n, -1).mean(1)
        b_means = b.reshape(batch_n, -1).mean(1)
        return ((1 - weights) * a_means + weights * b_means).sum()

    return Objective(
        inner, f"channel_interpolate({layer1}:{n1}, {layer2}:{n2})", [layer1, layer2],
        [_unit_check(layer1, n1), _unit_check(layer2, n2)],
    )


def L1(layer: str = INPUT, constant: float = 0.0, batch: int | None = None) -> Objective:
    """Sum of absolute differences from `constant` (subtract it to keep an image near gray, say)."""
    return Objective(lambda T: (_select(T(layer), batch) - constant).abs().sum(), f"L1({layer})", [layer])


def L2(layer: str = INPUT, constant: float = 0.0, epsilon: float = 1e-6, batch: int | None = None) -> Objective:
    """Euclidean norm of the difference from `constant`."""
    return Objective(
        lambda T: torch.sqrt(epsilon + ((_select(T(layer), batch) - constant) ** 2).sum()), f"L2({layer})", [layer]
    )


def total_variation(layer: str = INPUT, batch: int | None = None) -> Objective:
    """Sum of absolute differences between neighbouring pixels (as tf.image.total_variation)."""

    def inner(T: Activations) -> torch.Tensor:
        t = _select(T(layer), batch)
        return (t[..., 1:, :] - t[..., :-1, :]).abs().sum() + (t[..., :, 1:] - t[..., :, :-1]).abs().sum()

    return Objective(inner, f"total_variation({layer})", [layer])


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Lucid's 3x3 blur (centre weight 1, border 0.5), normalized at the image edges."""
    kernel = torch.full((3, 3), 0.5, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 1.0
    c = x.shape[1]
    weight = kernel.expand(c, 1, 3, 3)
    blurred = F.conv2d(x, weight, padding=1, groups=c)
    norm = F.conv2d(torch.ones_like(x[:1]), weight, padding=1, groups=c)
    return blurred / norm


def blur(layer: str = INPUT) -> Objective:
    """Lucid's blur_input_each_step: distance to a blurred copy; subtract k * blur() to blur the image a little each step."""

    def inner(T: Activations) -> torch.Tensor:
        t = T(layer)
        return 0.5 * ((t - _blur(t).detach()) ** 2).sum()

    return Objective(inner, f"blur({layer})", [layer])


blur_input_each_step = blur

__all__ = [
    "INPUT",
    "Activations",
    "Objective",
    "L1",
    "L2",
    "alignment",
    "as_objective",
    "blur",
    "blur_input_each_step",
    "centre_token",
    "channel",
    "channel_interpolate",
    "channel_values",
    "class_logit",
    "deepdream",
    "diversity",
    "direction",
    "direction_neuron",
    "each_channel",
    "direction_neuron_values",
    "direction_values",
    "each_direction",
    "each_distance",
    "each_direction_neuron",
    "each_neuron",
    "neuron",
    "neuron_values",
    "parse_unit",
    "total_variation",
]
