"""`pip install` of the wheel: only `loupe` lands in site-packages, and it imports correctly even
from a folder holding modules named like the old import roots (`pipeline.py`, `storage.py`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.packaging.import_probe import SHADOWED_SCRIPT, run_script, write_shadows
from tests.packaging.wheel_helpers import REPO, Venv


def test_installing_the_wheel_adds_only_loupe_to_site_packages(bare_install: Venv) -> None:
    entries = sorted(p.name for p in bare_install.site_packages.iterdir())
    assert entries == ["loupe", "loupe_atlas-0.1.0.dist-info"]
    installed = sorted(p.name for p in (bare_install.site_packages / "loupe").iterdir() if p.is_dir())
    assert {"pipeline", "storage", "jobs"} <= set(installed)


def test_the_installed_package_knows_its_version_and_layout_without_dependencies(bare_install: Venv, tmp_path: Path) -> None:
    report = run_script(
        "import json, importlib.util, loupe\n"
        "print(json.dumps({'version': loupe.__version__, 'path': loupe.__path__,"
        " 'storage': importlib.util.find_spec('loupe.storage').origin}))\n",
        cwd=tmp_path, python=bare_install.python,
    )
    package = bare_install.site_packages / "loupe"
    assert report["version"] == "0.1.0"
    assert report["path"] == [str(package)], "an installed loupe must not search outside itself"
    assert report["storage"] == str(package / "storage" / "__init__.py")


def test_the_loupe_console_script_is_installed_and_runs(installed: Venv, tmp_path: Path) -> None:
    script = installed.scripts / "loupe"
    assert script.is_file()
    result = subprocess.run([str(script), "build", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "--validate-only" in result.stdout


def test_the_installed_wheel_ignores_local_pipeline_and_storage_modules(installed: Venv, tmp_path: Path) -> None:
    write_shadows(tmp_path)
    report = run_script(SHADOWED_SCRIPT, cwd=tmp_path, python=installed.python)
    package = installed.site_packages / "loupe"
    assert report["loupe"] == str(package / "__init__.py")
    assert report["storage"] == str(package / "storage" / "__init__.py")
    assert report["models"] == str(package / "pipeline" / "models" / "__init__.py")
    assert report["cli"] == str(package / "jobs" / "cli" / "__init__.py")
    assert report["error"] and "missing-atlas" in report["error"]
    assert report["shadows_imported"] == []


def test_a_checkout_on_pythonpath_wins_over_the_installed_copy_as_a_whole(installed: Venv, tmp_path: Path) -> None:
    """`ray job submit --working-dir .` puts the checkout first on PYTHONPATH of a node whose image
    has Loupe installed: every part of loupe must then come from the checkout, never a mix."""
    report = run_script(SHADOWED_SCRIPT, cwd=tmp_path, python=installed.python, env={"PYTHONPATH": str(REPO)})
    assert report["loupe"] == str(REPO / "loupe" / "__init__.py")
    assert report["storage"] == str(REPO / "storage" / "__init__.py")
    assert report["models"] == str(REPO / "pipeline" / "models" / "__init__.py")
    assert report["cli"] == str(REPO / "jobs" / "cli" / "__init__.py")
