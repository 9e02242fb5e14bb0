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

import hashlib
import io
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from loupe.pipeline.errors import LoupeError

ACTIVATIONS = ("none", "relu", "topk", "jumprelu")
#: Latent values encoded at once (float32): 64M values = 256 MB, whatever the SAE's width.
CHUNK_VALUES = 1 << 26


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
    digest: str = ""  # sha256 of the file it was loaded from: builds key their items by it

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

    @property
    def kind(self) -> str:
        """"sae" when units are an encoder's latents, "directions" when they are plain projections."""
        return "sae" if self.encoder is not None else "directions"

    def check_layer(self, channels: int) -> None:
        """Refuse a basis made for a layer of another width (before any compute)."""
        if self.channels != channels:
            raise BasisError(f"basis {self.source} has {self.channels} channels per direction but layer "
                             f"{self.layer} has {channels} channels")

    def units_per_chunk(self, rows: int) -> int:
        """How many units to encode at a time for `rows` activation vectors, so one chunk of latent
        values stays near CHUNK_VALUES floats however wide the SAE (16k latents x 784 positions x
        64 images would be 3 GB at once)."""
        return max(1, min(self.units, CHUNK_VALUES // max(rows, 1)))

    def _pre(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Pre-activations of units [start, stop) for centred activations `x` [..., C] (float32)."""
        weight = (self.encoder if self.encoder is not None else self.directions)[start:stop].to(x.device)
        pre = x @ weight.T
        if self.encoder_bias is not None:
            pre = pre + self.encoder_bias[start:stop].to(x.device)
        return pre

    def _centred(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x - self.decoder_bias.to(x.device) if self.decoder_bias is not None else x

    def _cutoff(self, top: torch.Tensor) -> torch.Tensor:
        """Midway between the k-th and (k+1)-th of each vector's largest pre-activations `top` [..., <= k+1]."""
        assert self.k is not None
        if top.shape[-1] <= self.k:  # every unit is among the k largest
            return torch.full_like(top[..., 0], -torch.inf)
        return (top[..., self.k - 1] + top[..., self.k]) / 2

    def topk_cutoffs(self, x: torch.Tensor) -> torch.Tensor:
        """topk: for each vector [...], a value between its k-th and (k+1)-th largest pre-activations
        (found chunk by chunk over the units), so "among the k largest" is `pre > cutoff` even when
        a chunk's arithmetic differs from the whole encoding's in the last bits."""
        return self._cutoffs_of_centred(self._centred(x))

    def _cutoffs_of_centred(self, x: torch.Tensor) -> torch.Tensor:
        assert self.k is not None
        keep = min(self.k + 1, self.units)
        best: torch.Tensor | None = None
        step = self.units_per_chunk(x[..., 0].numel())
        for start in range(0, self.units, step):
            pre = self._pre(x, start, min(start + step, self.units))
            top = pre.topk(min(keep, pre.shape[-1]), dim=-1).values
            best = top if best is None else torch.cat([best, top], dim=-1).topk(keep, dim=-1).values
        assert best is not None
        return self._cutoff(best)

    def encode_slice(self, x: torch.Tensor, start: int, stop: int, cutoff: torch.Tensor | None = None) -> torch.Tensor:
        """Values of units [start, stop) only: [..., stop - start]. A topk basis needs `cutoff`
        (`topk_cutoffs(x)`); a unit then keeps its value where it is among the k largest."""
        pre = self._pre(self._centred(x), start, stop)
        threshold = self.threshold[start:stop] if self.threshold is not None else None
        return self._activate(pre, threshold, None if cutoff is None else cutoff[..., None])

    def encode_chunks(self, x: torch.Tensor) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(start, stop, values [..., stop - start]) of every chunk of units, `units_per_chunk` at a
        time. Centred once; a basis that fits in one chunk computes its pre-activations once (a
        wider topk basis needs one extra pass for its cutoffs)."""
        x = self._centred(x)
        step = self.units_per_chunk(x[..., 0].numel())
        if step >= self.units:
            pre = self._pre(x, 0, self.units)
            cutoff = None
            if self.activation == "topk":
                assert self.k is not None
                cutoff = self._cutoff(pre.topk(min(self.k + 1, self.units), dim=-1).values)[..., None]
            yield 0, self.units, self._activate(pre, self.threshold, cutoff)
            return
        cutoffs = self._cutoffs_of_centred(x)[..., None] if self.activation == "topk" else None
        for start in range(0, self.units, step):
            stop = min(start + step, self.units)
            threshold = self.threshold[start:stop] if self.threshold is not None else None
            yield start, stop, self._activate(self._pre(x, start, stop), threshold, cutoffs)

    def encode_units(self, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """Row i's values of its own unit `units[i]`: `x` [m, ..., C] -> [m, ...] (pictures, scores)."""
        x = self._centred(x)
        units = units.to(x.device).long()
        weight = (self.encoder if self.encoder is not None else self.directions).to(x.device)[units]
        pre = torch.einsum("m...c,mc->m...", x, weight)
        per_row = (-1, *([1] * (pre.ndim - 1)))  # a unit's bias and threshold, broadcast over its row
        if self.encoder_bias is not None:
            pre = pre + self.encoder_bias.to(x.device)[units].reshape(per_row)
        threshold = self.threshold.to(x.device)[units].reshape(per_row) if self.threshold is not None else None
        cutoff = self._cutoffs_of_centred(x) if self.activation == "topk" else None
        return self._activate(pre, threshold, cutoff)

    def _activate(self, pre: torch.Tensor, threshold: torch.Tensor | None, cutoff: torch.Tensor | None) -> torch.Tensor:
        """The activation on pre-activations; `threshold` and `cutoff` already broadcast against `pre`."""
        if self.activation == "relu":
            return pre.clamp_min(0)
        if self.activation == "jumprelu":
            assert threshold is not None
            return torch.where(pre > threshold.to(pre.device), pre, torch.zeros_like(pre))
        if self.activation == "topk":
            if cutoff is None:
                raise BasisError(f"basis {self.source}: a topk slice needs its cutoffs (topk_cutoffs)")
            return torch.where(pre > cutoff, pre.clamp_min(0), torch.zeros_like(pre))
        return pre

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
                  threshold=_vector(threshold), source=url, digest=hashlib.sha256(data).hexdigest())
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
