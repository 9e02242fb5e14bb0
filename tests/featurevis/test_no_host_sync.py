"""The optimization step never waits for the device: no tensor is read back to the host (bool,
item, tolist, numpy, cpu) between the first and the last step, including the redirected-ReLU
steps, MACO's transparency map and every render kind. On a GPU any such read is a full stall."""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import pytest
import torch

from loupe.pipeline.featurevis import RenderSettings, engine, render_units

from .fv_helpers import natural_magnitude

READS = ("__bool__", "item", "tolist", "numpy", "cpu", "__float__", "__int__", "__index__")


class HostRead(AssertionError):
    pass


@contextlib.contextmanager
def no_host_reads():
    """Make every read of a tensor's values by the host raise, while active."""
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def refuse(name):
        def method(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            if "/torch/optim/" in caller:  # Adam's step counter: a host tensor on every device (not capturable)
                return saved[name](self, *args, **kwargs)
            raise HostRead(f"Tensor.{name} called inside the step loop")
        return method

    for name in READS:
        setattr(torch.Tensor, name, refuse(name))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@pytest.fixture
def guarded_steps(monkeypatch):
    """Run every step of engine.optimize (not the set-up or the final read-out) with host reads refused."""
    original = engine.optimize

    def guarded(*args, **kwargs):
        with no_host_reads():
            return original(*args, **kwargs)

    monkeypatch.setattr(engine, "optimize", guarded)


@pytest.mark.parametrize("kind", ["channel", "neuron", "negative", "diversity"])
@pytest.mark.parametrize("param", ["lucid", "maco"])
def test_render_steps_never_read_tensors_back(tiny, guarded_steps, kind, param):
    settings = RenderSettings(size=24, steps=20, param=param, images_per_unit=2, transparency=True)
    magnitude = natural_magnitude(24) if param == "maco" else None
    renders = render_units(tiny, "mid.2", [0, 1], kind, settings, images_per_step=4, magnitude=magnitude)
    assert renders.images.shape[0] == (4 if kind == "diversity" else 2)
    assert renders.alpha is not None and np.isfinite(renders.alpha.astype(np.float32)).all()


def test_the_guard_catches_a_host_read():
    with no_host_reads(), pytest.raises(HostRead):
        bool(torch.ones(2).sum() > 0)


def test_compiled_steps_never_read_tensors_back(tiny, monkeypatch):
    """The compiled graph replays without host reads (compiling happens once, before the guarded render)."""
    import torch._dynamo

    torch._dynamo.reset()
    settings = RenderSettings(size=24, steps=20, compile="default")
    try:
        render_units(tiny, "mid.2", [0, 1], "channel", settings, images_per_step=2)  # compiles this shape
        original = engine.optimize

        def guarded(*args, **kwargs):
            with no_host_reads():
                return original(*args, **kwargs)

        monkeypatch.setattr(engine, "optimize", guarded)
        renders = render_units(tiny, "mid.2", [2, 3], "channel", settings, images_per_step=2)
    finally:
        torch._dynamo.reset()
    assert renders.images.shape[0] == 2
