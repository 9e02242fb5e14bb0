"""Run a build from Python: `loupe.build(config)` is `loupe build CONFIG` without the shell."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from loupe.jobs.build.config import BuildConfig, load_config, parse_config
from loupe.jobs.build.progress import BuildSummary


def build(
    config: str | Path | Mapping[str, Any] | BuildConfig,
    *,
    executor: str = "ray",
    address: str | None = None,
    device: str | None = None,
    progress: bool | None = None,
) -> BuildSummary:
    """Build and publish the atlas a config describes; returns what happened.

    `config` is a YAML file path, an already parsed mapping (relative paths resolve against the
    current folder) or a `BuildConfig`. `executor="local"` runs every item in this process;
    `"ray"` joins `address` (or RAY_ADDRESS) or starts a local Ray on 127.0.0.1.
    """
    from loupe.jobs.build import run_build

    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif not isinstance(config, BuildConfig):
        config = parse_config(dict(config), base_dir=Path.cwd(), origin="config")
    return run_build(config, executor=executor, address=address, device=device, progress=progress)
