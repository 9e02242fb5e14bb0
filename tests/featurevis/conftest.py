"""Fixtures for the feature-visualization tests."""

import pytest
from .fv_helpers import make_tiny

from loupe.pipeline.models import LoadedModel


@pytest.fixture
def tiny() -> LoadedModel:
    """A fresh tiny conv net (ReLU, functional in-place ReLU, ReLU6, batch norms) on the CPU."""
    return make_tiny()
