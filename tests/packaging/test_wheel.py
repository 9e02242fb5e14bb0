"""The wheel `pip install .` builds: one import root, every subpackage, no tests or benchmarks."""

from __future__ import annotations

import tomllib
from pathlib import Path

from tests.packaging.wheel_helpers import (
    REPO, build_wheel, copy_checkout, drop_from_packages, missing_packages, wheel_names, wheel_text,
)


def top_level(names: list[str]) -> set[str]:
    return {name.split("/", 1)[0] for name in names}


def test_the_wheel_has_one_import_root(wheel: Path) -> None:
    names = wheel_names(wheel)
    dist_info = {n for n in top_level(names) if n.endswith(".dist-info")}
    assert dist_info == {"loupe_atlas-0.1.0.dist-info"}
    assert top_level(names) - dist_info == {"loupe"}, "only `loupe` may land in site-packages"
    assert wheel_text(wheel, ".dist-info/top_level.txt").split() == ["loupe"]
    for folder in ("pipeline", "storage", "jobs"):
        assert f"loupe/{folder}/__init__.py" in names


def test_every_subpackage_of_the_code_folders_is_in_the_wheel(wheel: Path) -> None:
    assert missing_packages(wheel) == [], "add the missing subpackage to [tool.setuptools] packages in pyproject.toml"


def test_every_module_of_the_code_folders_is_in_the_wheel(wheel: Path) -> None:
    names = set(wheel_names(wheel))
    for folder in ("loupe", "pipeline", "storage", "jobs"):
        for module in (REPO / folder).rglob("*.py"):
            inside = module.relative_to(REPO).as_posix() if folder == "loupe" else f"loupe/{module.relative_to(REPO).as_posix()}"
            assert inside in names, f"{module.relative_to(REPO)} is not in the wheel"


def test_the_wheel_holds_no_tests_benchmarks_or_caches(wheel: Path) -> None:
    for name in wheel_names(wheel):
        parts = name.split("/")
        assert not {"tests", "benchmarks", "deploy", "configs", "__pycache__"} & set(parts), name
        assert not parts[-1].startswith("test_") and not name.endswith(".pyc"), name


def test_the_wheel_declares_the_loupe_console_script(wheel: Path) -> None:
    scripts = wheel_text(wheel, ".dist-info/entry_points.txt")
    assert "[console_scripts]" in scripts and "loupe = loupe.jobs.cli:main" in scripts
    metadata = wheel_text(wheel, ".dist-info/METADATA")
    assert "Name: loupe-atlas" in metadata.splitlines()


def test_a_subpackage_left_out_of_the_packages_list_is_reported(tmp_path: Path) -> None:
    """The explicit `packages` list is what can go stale: prove the check above catches it."""
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    subpackage = next(p for p in packages if p.count(".") == 2)
    checkout = copy_checkout(tmp_path / "checkout")
    drop_from_packages(checkout, subpackage)
    stale = build_wheel(checkout, tmp_path / "wheel")
    assert missing_packages(stale, checkout) == [subpackage.replace(".", "/")]


def test_setuptools_in_the_test_extra_can_build_the_explicit_package_layout() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "setuptools>=77" in project["project"]["optional-dependencies"]["test"]
    assert project["build-system"]["requires"] == ["setuptools>=77"]

