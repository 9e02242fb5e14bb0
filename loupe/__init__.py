"""Loupe: feature visualizations and dataset examples for every unit of any PyTorch vision model.

One import root for the whole workflow::

    import loupe
    model = loupe.load_model("torchvision:googlenet", weights="DEFAULT")
    images = loupe.render_vis(model, "inception4a:97")
    summary = loupe.build("configs/quickstart.yaml", executor="local")
    atlas = loupe.open_atlas("atlas/quickstart")

The code lives in three packages, installed as `loupe.pipeline` (pure compute), `loupe.storage`
(the atlas store, no torch) and `loupe.jobs` (the CLI and the Ray build). Names here load lazily, so
`import loupe.storage` in a worker that only reads atlases never imports torch.
"""

from __future__ import annotations

import os as _os
from importlib import import_module as _import_module
from importlib.metadata import PackageNotFoundError as _PackageNotFoundError, version as _dist_version
from typing import TYPE_CHECKING, Any

# Installed, setuptools places pipeline/, storage/ and jobs/ inside this package. In a source
# checkout (an editable install, `ray job submit --working-dir .`, or no install at all) they sit
# beside this folder at the repository root; search there too so `loupe.pipeline` resolves to them.
_here = _os.path.dirname(_os.path.abspath(__file__))
_checkout = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "pipeline")) and _os.path.isfile(
        _os.path.join(_checkout, "pipeline", "__init__.py")):
    __path__.append(_checkout)  # type: ignore[name-defined]

try:
    __version__ = _dist_version("loupe-atlas")
except _PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"

#: public name -> (module, attribute); attribute None means the module itself.
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "load_model": ("loupe.pipeline.models", "load_model"),
    "capture": ("loupe.pipeline.models", "capture"),
    "render_vis": ("loupe.pipeline.featurevis", "render_vis"),
    "render_units": ("loupe.pipeline.featurevis", "render_units"),
    "objectives": ("loupe.pipeline.featurevis.objectives", None),
    "param": ("loupe.pipeline.featurevis.param", None),
    "transforms": ("loupe.pipeline.featurevis.transforms", None),
    "open_atlas": ("loupe.storage", "open_atlas"),
    "build": ("loupe.jobs.api", "build"),
}

__all__ = [
    "__version__",
    "build",
    "capture",
    "load_model",
    "objectives",
    "open_atlas",
    "param",
    "render_units",
    "render_vis",
    "transforms",
]

if TYPE_CHECKING:
    from loupe.jobs.api import build
    from loupe.pipeline.featurevis import objectives, param, render_units, render_vis, transforms
    from loupe.pipeline.models import capture, load_model
    from loupe.storage import open_atlas


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'loupe' has no attribute {name!r}") from None
    module = _import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
