"""One wheel per test session, built from a clean copy of the checkout, and venvs holding it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.packaging.wheel_helpers import Venv, build_wheel, copy_checkout, lend_dependencies, make_venv, pip_install


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    checkout = copy_checkout(tmp_path_factory.mktemp("checkout"))
    return build_wheel(checkout, tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def bare_install(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh venv with only the wheel installed (`--no-deps`): what `pip install .` adds."""
    venv = make_venv(tmp_path_factory.mktemp("bare") / "venv")
    pip_install(venv, wheel)
    return venv


@pytest.fixture(scope="session")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh venv with the wheel installed and the project venv's dependencies lent to it."""
    venv = make_venv(tmp_path_factory.mktemp("installed") / "venv")
    pip_install(venv, wheel)
    lend_dependencies(venv)
    return venv
