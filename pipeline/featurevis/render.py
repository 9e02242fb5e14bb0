"""render_vis: Lucid's one-call feature visualization, for any PyTorch model.

    from loupe.pipeline.featurevis import objectives, param, render_vis
    images = render_vis(lm, "features.10:37")                       # Lucid defaults
    images = render_vis(lm, objectives.channel("inception4a", 97) - 1e2 * objectives.diversity("inception4a"),
                        param_f=lambda: param.image(128, batch=4), thresholds=(64, 512), seed=0)

Defaults are Lucid's: a 128 px FFT image in decorrelated colour, Adam with learning rate 0.05,
the standard transforms, 512 steps, redirected ReLU gradients for the first 16 steps. The image
is fed at its own size (never upsampled to 224), and the forward pass stops at the deepest layer
the objective reads.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from loupe.pipeline.featurevis import engine
from loupe.pipeline.featurevis.objectives import Objective, as_objective
from loupe.pipeline.featurevis.param import Parameterization
from loupe.pipeline.featurevis.param import image as image_param
from loupe.pipeline.featurevis.transforms import Compose, Transform, standard_transforms
from loupe.pipeline.models import LoadedModel

ParamF = Callable[[], "Parameterization | tuple"] | Parameterization | None
OptimizerF = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer] | None
Progress = bool | Callable[[int, float], None]

DEFAULT_SIZE = 128
DEFAULT_LR = 0.05
REDIRECT_STEPS = 16


class _FunctionParam(Parameterization):
    """Adapts a Lucent-style `(params, image_f)` pair to a Parameterization."""

    def __init__(self, params: Sequence[torch.Tensor], image_f: Callable[[], torch.Tensor]) -> None:
        super().__init__()
        self._params = list(params)
        self._image_f = image_f
        probe = image_f()
        self.batch, self.height, self.width = probe.shape[0], probe.shape[-2], probe.shape[-1]

    def parameters(self, recurse: bool = True):  # type: ignore[override]
        return iter(self._params)

    def forward(self) -> torch.Tensor:
        return self._image_f()


def as_loaded_model(model: LoadedModel | nn.Module) -> LoadedModel:
    """A LoadedModel as is; a bare nn.Module wrapped with the default (ImageNet) preprocessing."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Module):
        return LoadedModel.from_module(model)
    raise TypeError(f"render needs a LoadedModel or a torch.nn.Module, got {type(model).__name__}")


def make_param(param_f: ParamF, device: torch.device) -> Parameterization:
    """Build the parameterization (default: Lucid's 128 px FFT image) on `device`."""
    made = param_f() if callable(param_f) and not isinstance(param_f, Parameterization) else param_f
    if made is None:
        made = image_param(DEFAULT_SIZE)
    if isinstance(made, tuple) and len(made) == 2:
        made = _FunctionParam(*made)
    if not isinstance(made, Parameterization):
        raise TypeError(
            f"param_f must build a featurevis Parameterization (e.g. param.image(128)) or a (params, image_f) "
            f"pair, got {type(made).__name__}"
        )
    return made.to(device)


def make_transform(transforms: Sequence[Transform | Callable] | Transform | None) -> Compose:
    if transforms is None:
        return Compose(standard_transforms)
    if isinstance(transforms, Compose):
        return transforms
    if isinstance(transforms, Transform):
        return Compose([transforms])
    return Compose(list(transforms))


def make_progress(progress: Progress, total: int, desc: str):
    """A per-step callback and a closer: tqdm when `progress` is True, the user's callable, or nothing."""
    if callable(progress):
        return progress, (lambda: None)
    if not progress:
        return None, (lambda: None)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", leave=False)

    def update(step: int, value: torch.Tensor) -> None:
        bar.update(1)
        if step % 16 == 0 or step + 1 == total:
            bar.set_postfix(objective=f"{float(value.detach().sum()):.4g}")

    return update, bar.close


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _seeded_start(param_f: ParamF, device: torch.device, seed: int | None, steps: int,
                  n_random: int) -> tuple[Parameterization, torch.Tensor | None]:
    """The parameterization and every step's transform draws, from `seed` without touching the global RNG."""
    rng_scope = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng_scope:
        if seed is not None:
            torch.manual_seed(seed)
        image = make_param(param_f, device)
        generator = torch.Generator()
        generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
    if not n_random:
        return image, None
    return image, torch.rand(steps, image.batch, n_random, generator=generator).to(device)


def render_vis(
    model: LoadedModel | nn.Module,
    objective: Objective | str,
    param_f: ParamF = None,
    optimizer: OptimizerF = None,
    transforms: Sequence[Transform | Callable] | None = None,
    thresholds: Sequence[int] = (512,),
    seed: int | None = None,
    progress: Progress = True,
    *,
    redirected_relu: bool = True,
    precision: str = "fp32",
    channels_last: bool = True,
    compile: str = "off",
) -> list[np.ndarray]:
    """Optimize an image to maximize `objective`; one float32 array `[B, H, W, 3]` in [0, 1] per threshold.

    `param_f` builds the parameterization (called under `seed`); `optimizer` maps the parameters to
    a torch optimizer; `transforms` is a list (default `transforms.standard_transforms`, `[]` for
    none). The image after `t` optimizer steps is returned for each `t` in `thresholds`. `seed` makes
    the result reproducible without touching the global RNG state. `progress` is True for a tqdm bar,
    or a callable `(step, objective_value)`. The model's hooks and settings are restored when the call
    ends, even on error. `precision="bf16"` autocasts the forward; `channels_last` (default on) runs convolutions in NHWC;
    `compile` ("default", "reduce-overhead", "max-autotune") compiles the model part of each step with torch.compile.
    """
    lm = as_loaded_model(model)
    objective = as_objective(objective)
    objective.validate(lm)
    steps = engine.check_thresholds(thresholds)
    acceleration = engine.Acceleration(precision=precision, channels_last=channels_last, compile=compile)
    transform = make_transform(transforms)

    image, uniforms = _seeded_start(param_f, lm.device, seed, steps[-1], transform.n_random)
    params = list(image.parameters())
    opt = optimizer(params) if optimizer is not None else torch.optim.Adam(params, lr=DEFAULT_LR)
    step_fn, close = make_progress(progress, steps[-1], desc=_short(objective.name))
    try:
        with engine.ForwardSession(lm, objective.layers, acceleration) as session:
            images = engine.optimize(
                session, objective, image, opt, transform, uniforms, steps,
                redirect_steps=REDIRECT_STEPS if redirected_relu else 0, progress=step_fn,
            )
    finally:
        close()
    return [batch.permute(0, 2, 3, 1).cpu().numpy() for batch in images]


__all__ = ["render_vis", "as_loaded_model", "make_param", "make_transform"]
