"""Run a short Python script in a child process and read back what it reports as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SHADOWS = ("pipeline", "storage", "jobs")


def run_script(script: str, cwd: Path, python: Path | str = sys.executable, env: dict[str, str] | None = None) -> Any:
    """Write `script` into `cwd`, run it there (so `cwd` is sys.path[0]) and parse its last line."""
    path = cwd / "probe_script.py"
    path.write_text(script)
    child_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | (env or {})
    result = subprocess.run([str(python), str(path)], cwd=cwd, env=child_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{path.name} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_shadows(folder: Path) -> None:
    """Top-level modules named like Loupe's old import roots that blow up if anything imports them."""
    for name in SHADOWS:
        (folder / f"{name}.py").write_text(f"raise ImportError('the local {name}.py was imported instead of loupe.{name}')\n")


#: Imports Loupe beside the shadowing modules and reports where each part came from.
SHADOWED_SCRIPT = """
import json, sys
import loupe
import loupe.storage
import loupe.pipeline.models
import loupe.jobs.cli
try:
    loupe.open_atlas("missing-atlas")
except loupe.storage.StorageError as exc:
    error = str(exc)
else:
    error = None
print(json.dumps({
    "loupe": loupe.__file__,
    "storage": loupe.storage.__file__,
    "models": loupe.pipeline.models.__file__,
    "cli": loupe.jobs.cli.__file__,
    "error": error,
    "shadows_imported": sorted(n for n in ("pipeline", "storage", "jobs") if n in sys.modules),
}))
"""
