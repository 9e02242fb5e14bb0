"""Read a state dict from any fsspec URL, check it against a model, and fingerprint weights.

Only plain tensor state dicts are accepted (`torch.load(weights_only=True)`): a checkpoint that
needs arbitrary unpickling is refused rather than executed.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from typing import Any, Mapping

import fsspec
import torch
from torch import nn

from loupe.pipeline.errors import WeightsError

_SHOWN_KEYS = 5


def read_state_dict(
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    state_dict_key: str | None = None,
    strip_prefix: str | None = None,
) -> dict[str, torch.Tensor]:
    """Load a plain tensor state dict from a local path, file://, s3:// or any fsspec URL.

    `state_dict_key` takes a nested dict (e.g. 'state_dict' in training checkpoints);
    `strip_prefix` removes a key prefix such as 'module.' left by DataParallel.
    """
    raw = _read_bytes(url, storage_options or {})
    try:
        loaded = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"weights file {url} is not a plain tensor state dict and is refused: it needs arbitrary "
            f"unpickling ({reason}). Re-save it with torch.save(model.state_dict(), path)."
        ) from None
    except Exception as exc:  # torch raises several types for non-checkpoint bytes
        raise WeightsError(f"weights file {url} could not be read as a torch checkpoint: {exc}") from None

    if state_dict_key:
        if not isinstance(loaded, Mapping) or state_dict_key not in loaded:
            available = sorted(loaded.keys()) if isinstance(loaded, Mapping) else []
            raise WeightsError(
                f"weights file {url} has no entry '{state_dict_key}' (top-level keys: {available[:10]})"
            )
        loaded = loaded[state_dict_key]
    if not isinstance(loaded, Mapping):
        raise WeightsError(
            f"weights file {url} holds a {type(loaded).__name__}, not a state dict (a mapping of names to tensors)"
        )
    not_tensors = [k for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        nested = [k for k in not_tensors if isinstance(loaded[k], Mapping)]
        hint = f"; set state_dict_key to one of {nested}" if nested else ""
        raise WeightsError(
            f"weights file {url} is not a plain tensor state dict: entries {not_tensors[:_SHOWN_KEYS]} "
            f"are not tensors{hint}"
        )
    state = {str(k): v for k, v in loaded.items()}
    if strip_prefix:
        state = {k[len(strip_prefix):] if k.startswith(strip_prefix) else k: v for k, v in state.items()}
    return state


def _read_bytes(url: str, storage_options: Mapping[str, Any]) -> bytes:
    try:
        with fsspec.open(url, "rb", **storage_options) as handle:
            return handle.read()
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {url}") from None
    except PermissionError as exc:
        raise WeightsError(f"weights file {url} is not readable (permission denied): {exc}") from None
    except (OSError, ValueError, ImportError) as exc:
        raise WeightsError(f"weights file {url} could not be read: {exc}") from None


def check_compatible(model: nn.Module, state: Mapping[str, torch.Tensor], origin: str) -> None:
    """Fail with the first mismatched keys and shapes before load_state_dict's long message."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:_SHOWN_KEYS]} ({len(missing)} in all)")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:_SHOWN_KEYS]} ({len(unexpected)} in all)")
    if wrong_shape:
        problems.append(f"shape mismatches {wrong_shape[:_SHOWN_KEYS]} ({len(wrong_shape)} in all)")
    if problems:
        hint = ""
        prefixes = {k.split(".", 1)[0] + "." for k in unexpected if "." in k}
        if unexpected and len(prefixes) == 1 and len(unexpected) == len(state):
            hint = f"; every key starts with '{prefixes.pop()}': set strip_prefix to drop it"
        raise WeightsError(f"weights {origin} do not fit the model: " + "; ".join(problems) + hint)


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], origin: str) -> None:
    """Strictly load `state` into `model`, with errors that name the mismatched keys."""
    check_compatible(model, state, origin)
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"weights {origin} do not fit the model: {exc}") from None


def weights_digest(model: nn.Module) -> str:
    """A sha256 over every parameter and buffer (names, dtypes, shapes, bytes), for provenance and cache keys."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
