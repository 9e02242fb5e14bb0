"""The plain-array form shared by every mergeable scan statistic: `state()` / `from_state(state)`.

A state is a flat `dict[str, np.ndarray]` of numeric (or fixed-width string) arrays, never object
arrays, so it can be saved as `.npz` and loaded with `allow_pickle=False`: a saved partial result
is data, not code. Nested statistics prefix their names (`top.keys`, `layer0.sums.limbs`).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from loupe.pipeline.errors import LoupeError

State = dict[str, np.ndarray]
_KINDS = {"int": "iu", "float": "f", "str": "U", "bool": "b"}


class StateError(LoupeError):
    """A saved statistic state is incomplete or has the wrong shapes or types; the message names the array."""


def prefixed(prefix: str, state: Mapping[str, np.ndarray]) -> State:
    """The arrays of a nested statistic under `prefix.`."""
    return {f"{prefix}.{name}": value for name, value in state.items()}


def unprefixed(prefix: str, state: Mapping[str, np.ndarray]) -> State:
    """The arrays saved under `prefix.`, without it."""
    head = f"{prefix}."
    return {name[len(head):]: value for name, value in state.items() if name.startswith(head)}


def take(state: Mapping[str, np.ndarray], name: str, kind: str, ndim: int | None = None) -> np.ndarray:
    """One array of a state, checked for presence, kind ("int", "float", "str", "bool") and rank."""
    if name not in state:
        raise StateError(f"statistic state has no array {name!r} (it holds {sorted(state)[:12]})")
    value = np.asarray(state[name])
    if value.dtype.kind not in _KINDS[kind]:
        raise StateError(f"statistic state array {name!r} must hold {kind} values, got dtype {value.dtype}")
    if ndim is not None and value.ndim != ndim:
        raise StateError(f"statistic state array {name!r} must have {ndim} dimension(s), got shape {value.shape}")
    return value


def scalar(state: Mapping[str, np.ndarray], name: str, kind: str) -> int | str:
    """A 0-d array of a state as a Python int or str."""
    value = take(state, name, kind, ndim=0)
    return str(value) if kind == "str" else int(value)


def strings(values) -> np.ndarray:
    """Fixed-width unicode array (never object dtype), also for an empty list."""
    values = list(values)
    return np.array(values, dtype=str) if values else np.zeros(0, dtype="<U1")


def check_shape(name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if value.shape != shape:
        raise StateError(f"statistic state array {name!r} has shape {value.shape}, expected {shape}")
    return value
