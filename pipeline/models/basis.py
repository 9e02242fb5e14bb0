"""A basis of a layer's activation space: the "units" of a layer besides its channels.

`channels` is the default basis (unit i = channel i). A `Basis` replaces it by `n` directions
over the layer's C channels: plain directions (unit i = dot product with direction i), or a
sparse autoencoder's encoder, so a scan measures each latent exactly as the SAE computes it:

    pre = (x - b_dec) @ W_enc.T + b_enc
    relu: max(pre, 0)    topk: the k largest of pre per position kept (then ReLU), the rest 0
    jumprelu: pre where pre > threshold, else 0    none: pre

`directions` (the decoder rows of an SAE) are what renders maximize. Files are safetensors,
`.npz` (loaded with allow_pickle=False) or torch files loaded with `weights_only=True`: a basis
file is data, never code. Shapes are checked against the layer before any compute, and errors
name the file, the key and the expected shape.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from loupe.pipeline.errors import LoupeError

ACTIVATIONS = ("none", "relu", "topk", "jumprelu")


class BasisError(LoupeError):
    """A basis file or value is unusable (wrong shape, wrong layer width, not plain tensors)."""


@dataclass(frozen=True, eq=False)
class Basis:
    """`n` units over a layer's `C` channels: directions [n, C] and, for an SAE, its encoder."""

    layer: str
    directions: torch.Tensor  # float32 [n, C]
    encoder: torch.Tensor | None = None  # float32 [n, C]; None: project onto `directions`
    encoder_bias: torch.Tensor | None = None  # [n]
    decoder_bias: torch.Tensor | None = None  # [C]
    activation: str = "none"
    k: int | None = None  # topk
    threshold: torch.Tensor | None = None  # [n], jumprelu
    source: str = "<memory>"

    def __post_init__(self) -> None:
        where = f"basis {self.source} for layer {self.layer}"
        if self.directions.ndim != 2 or self.directions.shape[0] < 1:
            raise BasisError(f"{where}: directions must be [units, channels], got {list(self.directions.shape)}")
        n, c = self.directions.shape
        for name, value, shape in (("W_enc", self.encoder, (n, c)), ("b_enc", self.encoder_bias, (n,)),
                                   ("b_dec", self.decoder_bias, (c,)), ("threshold", self.threshold, (n,))):
            if value is not None and tuple(value.shape) != shape:
                raise BasisError(f"{where}: {name} must have shape {list(shape)}, got {list(value.shape)}")
        if self.activation not in ACTIVATIONS:
            raise BasisError(f"{where}: activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.activation == "topk" and (self.k is None or not 1 <= self.k <= n):
            raise BasisError(f"{where}: a topk activation needs k between 1 and {n}, got {self.k!r}")
        if self.activation == "jumprelu" and self.threshold is None:
            raise BasisError(f"{where}: a jumprelu activation needs a threshold [units]")

    @property
    def units(self) -> int:
        return int(self.directions.shape[0])

    @property
    def channels(self) -> int:
        return int(self.directions.shape[1])

    def check_layer(self, channels: int) -> None:
        """Refuse a basis made for a layer of another width (before any compute)."""
        if self.channels != channels:
            raise BasisError(f"basis {self.source} has {self.channels} channels per direction but layer "
                             f"{self.layer} has {channels} channels")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Unit values of activations `x` [..., C] -> [..., n], on x's device and dtype float32."""
        x = x.float()
        weight = (self.encoder if self.encoder is not None else self.directions).to(x.device)
        if self.decoder_bias is not None:
            x = x - self.decoder_bias.to(x.device)
        pre = x @ weight.T
        if self.encoder_bias is not None:
            pre = pre + self.encoder_bias.to(x.device)
        if self.activation == "relu":
            return pre.clamp_min(0)
        if self.activation == "jumprelu":
            return torch.where(pre > self.threshold.to(x.device), pre, torch.zeros_like(pre))
        if self.activation == "topk":
            values, index = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, index, values.clamp_min(0))
        return pre


def load_basis(url: str, layer: str, channels: int, *, activation: str | None = None, k: int | None = None,
               storage_options: Mapping[str, Any] | None = None) -> Basis:
    """A basis from a file (any fsspec URL): a plain [n, C] tensor of directions, or named tensors
    `directions` or `W_dec` [n, C], optionally `W_enc` ([n, C] or [C, n]), `b_enc`, `b_dec`,
    `threshold`. `activation` defaults to relu for an SAE (jumprelu with a threshold), none otherwise."""
    import fsspec

    try:
        with fsspec.open(url, "rb", **dict(storage_options or {})) as handle:
            data = handle.read()
    except (OSError, ValueError) as exc:
        raise BasisError(f"cannot read basis file {url}: {exc}") from None
    tensors = _tensors(url, data)
    where = f"basis file {url}"
    directions = tensors.get("directions", tensors.get("W_dec"))
    if directions is None:
        raise BasisError(f"{where} has no 'directions' or 'W_dec' tensor (it has {sorted(tensors)})")
    directions = _matrix(directions, channels, f"{where}: {'directions' if 'directions' in tensors else 'W_dec'}", layer)
    encoder = tensors.get("W_enc")
    if encoder is not None:
        encoder = _matrix(encoder, channels, f"{where}: W_enc", layer, units=directions.shape[0])
    threshold = tensors.get("threshold")
    chosen = activation or ("none" if encoder is None else ("jumprelu" if threshold is not None else "relu"))
    basis = Basis(layer=layer, directions=directions, encoder=encoder, encoder_bias=_vector(tensors.get("b_enc")),
                  decoder_bias=_vector(tensors.get("b_dec")), activation=chosen, k=k,
                  threshold=_vector(threshold), source=url)
    basis.check_layer(channels)
    return basis


def _tensors(url: str, data: bytes) -> dict[str, torch.Tensor]:
    name = url.lower().split("?")[0]
    try:
        if name.endswith(".safetensors"):
            from safetensors.torch import load

            return dict(load(data))
        if name.endswith(".npz") or name.endswith(".npy"):
            loaded = np.load(io.BytesIO(data), allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                return {"directions": torch.from_numpy(loaded)}
            return {key: torch.from_numpy(loaded[key]) for key in loaded.files}
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except BasisError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure: say which file and why, never run it
        raise BasisError(f"basis file {url} is not plain tensors (safetensors, .npz, or a torch file of tensors "
                         f"loadable with weights_only=True): {type(exc).__name__}: {str(exc)[:200]}") from None
    if isinstance(loaded, torch.Tensor):
        return {"directions": loaded}
    if isinstance(loaded, Mapping) and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return {str(k): v for k, v in loaded.items()}
    raise BasisError(f"basis file {url} holds a {type(loaded).__name__}, not a tensor or a dict of tensors")


def _matrix(value: torch.Tensor, channels: int, where: str, layer: str, units: int | None = None) -> torch.Tensor:
    value = value.detach().float()
    if value.ndim != 2:
        raise BasisError(f"{where} must be a matrix [units, {channels}], got shape {list(value.shape)}")
    if value.shape[1] == channels and (units is None or value.shape[0] == units):
        return value.contiguous()
    if value.shape[0] == channels and (units is None or value.shape[1] == units):
        return value.T.contiguous()  # stored [C, n], as some SAE libraries do
    expected = f"[{units if units is not None else 'units'}, {channels}]"
    raise BasisError(f"{where} has shape {list(value.shape)}; layer {layer} has {channels} channels, so it must be "
                     f"{expected}")


def _vector(value: torch.Tensor | None) -> torch.Tensor | None:
    return None if value is None else value.detach().float().reshape(-1)


__all__ = ["ACTIVATIONS", "Basis", "BasisError", "load_basis"]
