"""Build the project's wheel from a clean copy of the checkout and install it into a bare venv.

The copy holds exactly the files a fresh clone has (git's tracked and untracked-but-not-ignored
files), so the wheel is what `pip install .` makes from a clone: a stray `build/` or `.egg-info`
in the working tree cannot leak in, and building never writes into the shared working tree.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DISTRIBUTION = "loupe-atlas"
#: repository-root folder -> the package it installs as (pyproject.toml's package-dir).
CODE_FOLDERS = {"pipeline": "loupe/pipeline", "storage": "loupe/storage", "jobs": "loupe/jobs"}


@dataclass(frozen=True)
class Venv:
    """A bare virtual environment holding only what was installed into it."""

    root: Path
    python: Path
    site_packages: Path
    scripts: Path


def copy_checkout(dest: Path) -> Path:
    """Copy the files a fresh clone of the repository would have into `dest`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def drop_from_packages(checkout: Path, package: str) -> None:
    """Rewrite the copy's explicit `packages` list without `package` (to prove the checks notice)."""
    pyproject = checkout / "pyproject.toml"
    text = pyproject.read_text()
    line = re.search(r"^packages = \[.*\]$", text, re.M)
    assert line and f'"{package}"' in line.group(0), f"pyproject.toml's packages list does not name {package}"
    kept = line.group(0).replace(f'"{package}", ', "").replace(f', "{package}"', "")
    pyproject.write_text(text.replace(line.group(0), kept))


def build_wheel(checkout: Path, out: Path) -> Path:
    """`pip wheel` the checkout with the venv's own setuptools (no network, no build isolation)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(out), str(checkout.resolve())],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (wheel,) = out.glob("*.whl")
    return wheel


def wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def wheel_text(wheel: Path, suffix: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(suffix)]
        return archive.read(name).decode()


def missing_packages(wheel: Path, source_root: Path = REPO) -> list[str]:
    """Package folders (those with an __init__.py) under the code folders that the wheel lacks."""
    names = set(wheel_names(wheel))
    missing = []
    for folder, installed_as in CODE_FOLDERS.items():
        for init in sorted((source_root / folder).rglob("__init__.py")):
            if "__pycache__" in init.parts:
                continue
            inside = f"{installed_as}/{init.relative_to(source_root / folder).as_posix()}"
            if inside not in names:
                missing.append(inside.removesuffix("/__init__.py"))
    return missing


def make_venv(root: Path) -> Venv:
    """A plain venv without pip (the project venv's pip installs into it with --python)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    paths = sysconfig.get_paths(vars={"base": str(root), "platbase": str(root)})
    return Venv(root=root, python=root / "bin" / "python", site_packages=Path(paths["purelib"]),
                scripts=Path(paths["scripts"]))


def pip_install(venv: Venv, wheel: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv.python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )


def lend_dependencies(venv: Venv) -> None:
    """Let the bare venv import Loupe's dependencies from the project venv, after its own packages.

    A .pth line appends the project's site-packages to sys.path; .pth files inside that folder
    are not processed, so the project's editable `loupe` finder stays out and `import loupe`
    still finds only the installed wheel.
    """
    project_site = Path(sysconfig.get_paths()["purelib"])
    (venv.site_packages / "_loupe_test_dependencies.pth").write_text(f"{project_site}\n")
