"""The optimization loop shared by render_vis and render_units.

One place owns everything that must be undone when a render ends, even on error: the
activation-capture hooks (loupe.pipeline.models.capture, which also stops each forward right after the
deepest layer an objective reads), the channels_last conversion of the model's weights, and the
torch-function modes active only inside each forward: eval batch norm as a multiply-add, and the
redirected ReLU of the first steps. Models that accept a single input size (vision transformers with
learned position embeddings) get every input resized to it, so renders of any size and the
size-changing standard transforms work on them.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.featurevis.eval_batchnorm import AffineBatchNormMode
from loupe.pipeline.featurevis.objectives import INPUT, Activations
from loupe.pipeline.featurevis.param import Parameterization
from loupe.pipeline.featurevis.redirected_relu import RedirectedReLUMode
from loupe.pipeline.featurevis.transforms import Compose
from loupe.pipeline.models import LoadedModel, capture

PRECISIONS = ("fp32", "bf16")
#: `torch.compile` modes for the step (torch's own names), or "off" to run it eagerly.
#: "reduce-overhead" and "max-autotune" add CUDA graphs on CUDA (one replay per step instead of thousands of launches).
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
#: How many compiled variants of the model part one process keeps (layer sets x options).
COMPILED_VARIANTS = 256
ProgressFn = Callable[[int, float], None]


@dataclass(frozen=True)
class Acceleration:
    """Speed options; each changes numerics only slightly and is off unless asked for."""

    precision: str = "fp32"  # "bf16": autocast the model's forward to bfloat16 (activations read back in fp32)
    channels_last: bool = False  # NHWC memory format for the model's weights and input (faster convs, CPU and GPU)
    affine_batchnorm: bool = True  # eval-mode batch norms as one multiply-add (same values, cheaper backward)
    compile: str = "off"  # torch.compile the model's forward and backward in each step with this mode (COMPILE_MODES)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise LoupeError(f"precision must be one of {PRECISIONS}, got '{self.precision}'")
        if self.compile not in COMPILE_MODES:
            raise LoupeError(f"compile must be one of {', '.join(COMPILE_MODES)}, got '{self.compile}'")


def check_thresholds(thresholds: Iterable[int]) -> list[int]:
    """Sorted, unique, positive step counts, or a clear error."""
    try:
        values = sorted({int(t) for t in thresholds})
    except (TypeError, ValueError):
        raise LoupeError(f"thresholds must be step counts (positive integers), got {thresholds!r}") from None
    if not values or values[0] < 1:
        raise LoupeError(f"thresholds must be positive step counts, got {thresholds!r}")
    return values


def fixed_input_size(module: torch.nn.Module) -> tuple[int, int] | None:
    """The only (height, width) the model accepts, or None when any size works.

    Vision transformers with learned position embeddings refuse other sizes: torchvision's
    `VisionTransformer` (`image_size`) and timm's `PatchEmbed` with `strict_img_size`. Renders
    change the size (the standard transforms pad and crop), so their inputs are resized to this.
    """
    from torchvision.models import VisionTransformer

    for sub in module.modules():
        if isinstance(sub, VisionTransformer):
            return int(sub.image_size), int(sub.image_size)
        size = getattr(sub, "img_size", None)
        if size is not None and getattr(sub, "strict_img_size", False) and not getattr(sub, "dynamic_img_size", False):
            height, width = (size, size) if isinstance(size, int) else size
            return int(height), int(width)
    return None


def fit_input(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """`x` resized (bilinear, antialiased, differentiable) to a fixed model input size; as is otherwise."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


class ForwardSession:
    """Runs the model on transformed images and hands objectives an `Activations` view; undoes everything on exit."""

    def __init__(self, model: LoadedModel, layers: Iterable[str], acceleration: Acceleration = Acceleration()) -> None:
        self.model = model
        self.layers = sorted(set(layers) - {INPUT}, key=lambda name: model.catalog[name].order)
        self.acceleration = acceleration
        self.layouts = {name: model.catalog[name].layout for name in self.layers}
        self.input_size = fixed_input_size(model.module)
        self._stack = contextlib.ExitStack()
        self._capture = None
        #: The model part compiled once per session (shapes are fixed during a render) and replayed at
        #: every step; the redirected-ReLU steps (a custom autograd function inside a torch-function
        #: mode, which dynamo cannot trace as one graph) and calls under no_grad run eagerly.
        self._compiled = None
        self._compiled_ran = False
        if acceleration.compile != "off":
            self._compiled = torch.compile(self._run_model, mode=acceleration.compile, fullgraph=True, dynamic=False)

    def __enter__(self) -> "ForwardSession":
        try:
            if self._compiled is not None:
                # Each (layer set, precision, memory format) is one cached graph of `_run_model`; a
                # worker renders many layers of a model, more than dynamo's default of 8 variants
                # before it silently falls back to eager.
                self._stack.enter_context(torch._dynamo.config.patch(recompile_limit=COMPILED_VARIANTS))
            if self.acceleration.channels_last:
                self._stack.enter_context(_channels_last(self.model.module))
            if self.layers:
                self._capture = self._stack.enter_context(capture(self.model, self.layers))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._capture = None
        self._stack.close()

    def __call__(self, x: torch.Tensor, image: torch.Tensor, redirect: bool = False) -> Activations:
        """Activations of `x` (transformed image, RGB in [0, 1]) plus `image` itself as the "input" pseudo-layer."""
        values: dict[str, torch.Tensor] = {INPUT: image}
        if self._capture is not None:
            compiled = self._compiled is not None and not redirect and torch.is_grad_enabled()
            run = self._run_compiled if compiled else self._run_model
            values.update(run(x, redirect))
        return Activations(values, self.layouts, self.model.categories)

    def _run_compiled(self, x: torch.Tensor, redirect: bool) -> dict[str, torch.Tensor]:
        """The compiled model part; if the first call cannot compile it (a model dynamo cannot trace
        as one graph), say so once and run this session eagerly rather than fail the render."""
        if self._compiled_ran:
            return self._compiled(x, redirect)
        try:
            values = self._compiled(x, redirect)
        except Exception as exc:  # noqa: BLE001 - any compile failure: eager gives the same pictures
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            warnings.warn(f"torch.compile (mode {self.acceleration.compile!r}) cannot compile {self.model.name} up to "
                          f"{', '.join(self.layers)} ({type(exc).__name__}: {reason}); rendering eagerly",
                          RuntimeWarning, stacklevel=2)
            self._compiled = None
            return self._run_model(x, redirect)
        self._compiled_ran = True
        return values

    def _run_model(self, x: torch.Tensor, redirect: bool) -> dict[str, torch.Tensor]:
        """The model part of a call: resize, memory format, torch-function modes, autocast, capture."""
        x = fit_input(x, self.input_size)
        if self.acceleration.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        bf16 = self.acceleration.precision == "bf16"
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16), \
                contextlib.ExitStack() as stack:  # autocast outside the stack: dynamo traces it only as a `with`
            if self.acceleration.affine_batchnorm:
                stack.enter_context(AffineBatchNormMode())
            if redirect:
                stack.enter_context(RedirectedReLUMode())
            acts = self._capture.run(x)
        return {name: t.float() for name, t in acts.items()}


@contextlib.contextmanager
def _channels_last(module: torch.nn.Module) -> Iterator[None]:
    """Convert 4-D weights to channels_last for the duration, then back (the caller's model is left as found)."""
    module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        module.to(memory_format=torch.contiguous_format)


def optimize(
    session: ForwardSession,
    objective: Callable[[Activations], torch.Tensor],
    image_param: Parameterization,
    optimizer: torch.optim.Optimizer,
    transform: Compose,
    uniforms: torch.Tensor | None,
    thresholds: Sequence[int],
    redirect_steps: int = 16,
    progress: ProgressFn | None = None,
    saliency: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Maximize `objective` for max(thresholds) steps; return the image batch after each threshold.

    `uniforms[step]` is the `[B, transform.n_random]` block of random numbers for that step's transforms.
    `saliency` (`[B, H, W]`, on the image's device), if given, accumulates |d objective / d image|
    summed over colour channels at every step (MACO's transparency), on the device: no host sync.
    """
    wanted = set(thresholds)
    images: list[torch.Tensor] = []
    for step in range(max(thresholds)):
        optimizer.zero_grad(set_to_none=True)
        image = image_param()
        if saliency is not None:
            image.retain_grad()
        x = transform(image, uniforms[step] if transform.n_random else None)
        value = objective(session(x, image, redirect=step < redirect_steps))
        (-value.sum()).backward()
        if saliency is not None:
            saliency.add_(image.grad.abs().sum(dim=1))
        optimizer.step()
        if progress is not None:
            progress(step, value)
        if step + 1 in wanted:
            images.append(image_param.image())
    return images


def step_uniforms(
    generators: Sequence[torch.Generator], steps: int, n_random: int, device: torch.device
) -> torch.Tensor | None:
    """`[steps, B, n_random]` uniforms, element b's drawn from its own generator (so batch mates never matter)."""
    if n_random == 0:
        return None
    per_element = [torch.rand(steps, n_random, generator=g) for g in generators]
    return torch.stack(per_element, dim=1).to(device)


__all__ = ["COMPILE_MODES", "Acceleration", "ForwardSession", "check_thresholds", "fit_input", "fixed_input_size", "optimize",
           "step_uniforms"]
