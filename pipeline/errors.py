"""Errors raised by the compute layer, each naming the source, file, layer or unit at fault."""

from __future__ import annotations

import difflib
from typing import Iterable


class LoupeError(ValueError):
    """Base class for every user-facing error in Loupe's compute layer."""


class ModelSourceError(LoupeError):
    """The model source string names no builder or callable that can be loaded."""


class WeightsError(LoupeError):
    """Weights are missing, unreadable, not a plain state dict, or do not fit the model."""


class LayerError(LoupeError):
    """A layer name is not in the model's catalog."""


class UnitError(LoupeError):
    """A unit index or unit address is malformed or out of range."""


def close_matches(word: str, candidates: Iterable[str], n: int = 5) -> str:
    """Format a 'did you mean' suffix, or '' when nothing is close."""
    matches = difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.6)
    if not matches:
        return ""
    return " (did you mean: " + ", ".join(matches) + "?)"
