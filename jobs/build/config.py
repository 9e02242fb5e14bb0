"""The build config: one YAML file a person can read, validated completely before any compute.

Every error names its field path (`models[0].layers[2]`) and the bad value; unknown keys are
rejected so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.models.bundled import BUNDLED, BUNDLED_PREFIX
from loupe.storage.layout import CHANNELS

RENDER_KINDS = ("channel", "neuron", "negative", "diversity")
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


class ConfigError(LoupeError):
    """The config file is missing, not YAML, or has fields with bad values (all listed at once)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AtlasConfig(_Strict):
    url: str = Field(description="atlas root: a local folder or s3://bucket/prefix (any fsspec URL)")
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()


class PreprocessingConfig(_Strict):
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    range: tuple[float, float] | None = Field(default=None, description="value range, e.g. [-1, 1]")
    input_size: int | None = Field(default=None, ge=8)
    resize_size: int | None = Field(default=None, ge=8)

    @model_validator(mode="after")
    def _one_way(self) -> "PreprocessingConfig":
        if self.range is not None and (self.mean is not None or self.std is not None):
            raise ValueError("give either range or mean/std, not both")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together")
        if self.range is not None and self.range[1] <= self.range[0]:
            raise ValueError(f"range must be increasing, got {list(self.range)}")
        return self


class RenderKindConfig(_Strict):
    enabled: bool = True
    size: int = Field(default=128, ge=16, le=1024)
    steps: int = Field(default=512, ge=1, le=100_000)
    seed: int = 0
    units_per_item: int = Field(default=32, ge=1, le=4096,
                                description="units rendered together in one work item (one storage shard)")
    images_per_unit: int = Field(default=1, ge=1, le=64, description="images per unit (diversity kind only)")
    param: Literal["lucid", "maco"] = Field(
        default="lucid", description="lucid: decorrelated Fourier image; maco: phase only, over the scan dataset's "
                                     "magnitude spectrum, stored as RGBA (alpha = transparency map)")
    precision: Literal["fp32", "bf16"] = Field(
        default="fp32", description="bf16: autocast the model to bfloat16 (faster on GPUs; pictures within a few "
                                    "grey levels of fp32, so it is part of the render items' keys)")
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = Field(
        default="off", description="torch.compile the model's part of each step with this mode (reduce-overhead and "
                                   "max-autotune: also CUDA graphs on a GPU); speed only, pictures equal within float rounding, "
                                   "not part of any key")


class RenderConfig(_Strict):
    channel: RenderKindConfig = RenderKindConfig()
    neuron: RenderKindConfig = RenderKindConfig(enabled=False)
    negative: RenderKindConfig = RenderKindConfig(enabled=False)
    diversity: RenderKindConfig = RenderKindConfig(enabled=False, images_per_unit=4, units_per_item=8)
    spectrum_images: int = Field(default=256, ge=1, le=1_000_000,
                                 description="scan images averaged into MACO's magnitude spectrum (param: maco)")

    def enabled_kinds(self) -> dict[str, RenderKindConfig]:
        return {kind: getattr(self, kind) for kind in RENDER_KINDS if getattr(self, kind).enabled}


def _check_render_overrides(value: dict) -> dict:
    for kind in value:
        if kind not in RENDER_KINDS:
            raise ValueError(f"unknown render kind '{kind}' (expected one of {list(RENDER_KINDS)})")
    return value


class BasisConfig(_Strict):
    """Units of a layer besides its channels: directions, or a sparse autoencoder's latents, from a file."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="the basis's name in the atlas (the layer key is <layer>@<name>)")
    url: str = Field(description="safetensors, .npz or torch tensors file (any fsspec URL): directions or "
                                 "W_dec [n, C], optionally W_enc, b_enc, b_dec, threshold")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    activation: Literal["auto", "none", "relu", "topk", "jumprelu"] = Field(
        default="auto", description="auto: relu for an SAE (jumprelu with a threshold), none for plain directions")
    k: int | None = Field(default=None, ge=1, description="latents kept per position (topk only)")
    units: Any = Field(default="all", description="which of the basis's units to build")
    render: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-kind overrides")

    _known_kinds = field_validator("render")(classmethod(lambda cls, value: _check_render_overrides(value)))

    @field_validator("name")
    @classmethod
    def _not_channels(cls, value: str) -> str:
        if value == CHANNELS:
            raise ValueError(f"'{CHANNELS}' is the layer's own basis; name a file basis otherwise")
        return value

    @model_validator(mode="after")
    def _topk_has_k(self) -> "BasisConfig":
        if self.activation == "topk" and self.k is None:
            raise ValueError("activation topk needs k")
        if self.activation != "topk" and self.k is not None:
            raise ValueError("k is only for activation topk")
        return self


class LayerConfig(_Strict):
    name: str
    units: Any = Field(default=None, description="default: the model's units")
    render: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-kind overrides")
    channels: bool = Field(default=True, description="build the layer's channels (its default basis)")
    bases: list[BasisConfig] = Field(default_factory=list, description="more bases of this layer")

    _known_kinds = field_validator("render")(classmethod(lambda cls, value: _check_render_overrides(value)))

    @model_validator(mode="after")
    def _something_to_build(self) -> "LayerConfig":
        if not self.channels and not self.bases:
            raise ValueError("channels: false needs at least one entry in bases")
        names = [basis.name for basis in self.bases]
        if len(set(names)) != len(names):
            raise ValueError(f"basis names must be unique within a layer, got {names}")
        return self

    def basis(self, name: str) -> BasisConfig:
        """The basis called `name` (KeyError names the layer's bases)."""
        for basis in self.bases:
            if basis.name == name:
                return basis
        raise KeyError(f"layer {self.name} has no basis {name!r} (it has {[b.name for b in self.bases]})")


class ModelConfig(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="the model's name in the atlas")
    source: str
    weights: str
    state_dict_key: str | None = None
    strip_prefix: str | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict, description="for reading weights")
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    preprocessing: PreprocessingConfig | None = None
    layers: Literal["all"] | list[str | LayerConfig]
    units: Any = "all"

    @field_validator("weights", mode="before")
    @classmethod
    def _weights_text(cls, value: Any) -> str:
        if value is None:
            raise ValueError("say 'none' explicitly for random init")
        text = str(value)
        if text.strip().startswith(BUNDLED_PREFIX):
            _check_bundled_name(text.strip())
        return text

    @field_validator("layers")
    @classmethod
    def _some_layers(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("list at least one layer, or say 'all'")
        return value

    def layer_configs(self) -> list[LayerConfig] | None:
        """Layers as LayerConfig (None means 'all'); plain names inherit the model's units."""
        if self.layers == "all":
            return None
        return [
            LayerConfig(name=l, units=self.units) if isinstance(l, str)
            else (l if l.units is not None else l.model_copy(update={"units": self.units}))
            for l in self.layers
        ]


class DatasetConfig(_Strict):
    url: str
    format: Literal["auto", "images", "parquet"] = "auto"
    storage_options: dict[str, Any] = Field(default_factory=dict)
    image_column: str | None = Field(default=None, description="Parquet: the column of encoded image bytes")
    id_column: str | None = None


class ExamplesConfig(_Strict):
    """Pictures a unit page shows without the dataset: top/bottom examples and quantile-band samples."""

    enabled: bool = Field(default=True, description="store example pictures, heat maps, band samples, histograms")
    example_size: int = Field(default=96, ge=8, le=512, description="side of each stored example picture (px)")
    heatmap_size: int = Field(default=24, ge=2, le=256, description="side of each stored activation heat map")
    quantiles: tuple[float, ...] = Field(default=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                                         description="band edges as quantiles of the per-image max, 0 to 1")
    samples_per_band: int = Field(default=5, ge=1, le=256, description="random images stored per band")
    histogram_bins: int = Field(default=32, ge=1, le=4096)
    seed: int = Field(default=0, description="seed of the band samples")
    units_per_item: int = Field(default=64, ge=1, le=4096,
                                description="units per stored shard of example pictures")

    @field_validator("quantiles")
    @classmethod
    def _bands(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(value) < 2 or value[0] != 0.0 or value[-1] != 1.0 or any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError(f"must rise strictly from 0 to 1 (at least one band), got {list(value)}")
        return value


class ScanConfig(_Strict):
    enabled: bool = True
    dataset: DatasetConfig
    k: int = Field(default=16, ge=1, le=1024)
    shards: int = Field(default=4, ge=1, le=100_000)
    images_per_batch: int = Field(default=64, ge=1, le=8192, description="images per forward pass")
    image_size: int | None = Field(default=None, ge=8, description="default: the model's input size")
    decode_workers: int = Field(default=2, ge=0, le=64)
    decode: Literal["pillow", "device"] = Field(
        default="pillow", description="pillow: decode in the worker processes (bit-exact); device: JPEGs decoded on "
                                      "the model's device (nvJPEG on a GPU), within a grey level of Pillow, so keyed")
    pooled_activations: bool = True
    examples: ExamplesConfig = ExamplesConfig()

    @model_validator(mode="after")
    def _samples_need_pooled(self) -> "ScanConfig":
        if self.examples.enabled and not self.pooled_activations:
            raise ValueError("examples need pooled_activations: true (band samples and histograms are drawn "
                             "from the stored per-image maxima); set examples.enabled: false to scan without them")
        return self


class ResourcesConfig(_Strict):
    gpus_per_actor: float = Field(default=1.0, gt=0, le=8)
    actors_per_gpu: int = Field(default=1, ge=1, le=64)
    cpus_per_actor: float = Field(default=1.0, gt=0)
    cpu_fallback: bool = True
    max_actors: int | None = Field(default=None, ge=1)
    max_in_flight_per_actor: int = Field(default=2, ge=1, le=64)
    max_retries: int = Field(default=3, ge=0, le=100)


class BuildConfig(_Strict):
    atlas: AtlasConfig
    models: list[ModelConfig] = Field(min_length=1)
    render: RenderConfig = RenderConfig()
    scan: ScanConfig | None = None
    resources: ResourcesConfig = ResourcesConfig()

    @model_validator(mode="after")
    def _unique_ids(self) -> "BuildConfig":
        seen: set[str] = set()
        for model in self.models:
            if model.id in seen:
                raise ValueError(f"model id '{model.id}' is used twice")
            seen.add(model.id)
        return self


def _check_bundled_name(weights: str) -> None:
    """Name the shipped weights in the config error itself, with its field path."""
    if weights[len(BUNDLED_PREFIX):] not in BUNDLED:
        raise ValueError(f"unknown bundled weights; available are {[BUNDLED_PREFIX + n for n in BUNDLED]}")


def parse_units(spec: Any, channels: int, where: str) -> list[int]:
    """'all', an int, 'a-b' (inclusive), a comma-separated string or a list of those -> sorted unique unit indices."""
    if spec == "all" or spec is None:
        return list(range(channels))
    items = spec if isinstance(spec, list) else [spec]
    items = [part.strip() if isinstance(item, str) else part
             for item in items for part in (item.split(",") if isinstance(item, str) else [item])]
    units: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise ConfigError(f"{where}: {item!r} is not a unit index")
        if isinstance(item, int):
            units.add(item)
            continue
        match = _RANGE.match(str(item))
        if match:
            start, stop = int(match.group(1)), int(match.group(2))
            if stop < start:
                raise ConfigError(f"{where}: range '{item}' ends before it starts")
            units.update(range(start, stop + 1))
            continue
        if str(item).strip().isdigit():
            units.add(int(str(item)))
            continue
        raise ConfigError(f"{where}: {item!r} is not 'all', a unit index or a range like '0-31'")
    bad = sorted(u for u in units if not 0 <= u < channels)
    if bad:
        raise ConfigError(f"{where}: units {bad[:5]} are out of range: the layer has {channels} channels (0..{channels - 1})")
    return sorted(units)


def load_config(path: str | Path) -> BuildConfig:
    """Read and validate a YAML build config; relative local paths resolve against the file's folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return parse_config(raw, base_dir=path.parent, origin=str(path))


def parse_config(raw: dict, base_dir: Path | None = None, origin: str = "config") -> BuildConfig:
    try:
        config = BuildConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from None
    return _resolve_paths(config, base_dir) if base_dir is not None else config


def format_validation_error(exc: ValidationError, origin: str) -> str:
    errors = [(_field_path(error["loc"]), error) for error in exc.errors()]
    paths = [path for path, _ in errors]
    # A union (e.g. `layers: all | [..]`) reports one error per branch; keep only the deepest.
    errors = [
        (path, error) for path, error in errors
        if not any(other != path and other.startswith((path + ".", path + "[")) for other in paths)
    ]
    merged: dict[str, tuple[list[str], str]] = {}
    for location, error in errors:
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (not a Loupe config field)"
        value = error.get("input")
        shown = "" if error["type"] == "missing" or isinstance(value, dict) else f" (got {value!r})"
        messages, _ = merged.setdefault(location, ([], shown))
        messages.append(message)
    for messages, _ in merged.values():  # a union's other branch ("should be a valid string") is noise here
        if len(messages) > 1:
            messages[:] = [m for m in messages if not m.startswith("Input should be a valid")] or messages
    lines = [f"{origin} has {len(merged)} error(s):"]
    lines += [f"  {location}: {' or '.join(messages)}{shown}" for location, (messages, shown) in merged.items()]
    return "\n".join(lines)


def _field_path(location: tuple) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("str", "LayerConfig", "literal['all']") or "[" in str(part) or str(part).startswith("function-"):
            continue  # pydantic's names of union branches and validators, not fields
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _resolve_paths(config: BuildConfig, base_dir: Path) -> BuildConfig:
    """Make relative local paths (atlas, dataset, weights files) absolute, so Ray workers agree on them."""

    def resolve(url: str) -> str:
        if "://" in url or Path(url).is_absolute():
            return url
        return str((base_dir / url).resolve())

    atlas = config.atlas.model_copy(update={"url": resolve(config.atlas.url)})
    def with_basis_paths(layer: str | LayerConfig) -> str | LayerConfig:
        if isinstance(layer, str) or not layer.bases:
            return layer
        return layer.model_copy(update={"bases": [b.model_copy(update={"url": resolve(b.url)}) for b in layer.bases]})

    models = [
        m.model_copy(update={"weights": resolve(m.weights) if _is_local_weights_path(m.weights) else m.weights,
                             "layers": m.layers if m.layers == "all" else [with_basis_paths(l) for l in m.layers]})
        for m in config.models
    ]
    scan = config.scan
    if scan is not None:
        scan = scan.model_copy(update={"dataset": scan.dataset.model_copy(update={"url": resolve(scan.dataset.url)})})
    return config.model_copy(update={"atlas": atlas, "models": models, "scan": scan})


def _is_local_weights_path(weights: str) -> bool:
    return "://" not in weights and ("/" in weights or weights.endswith((".pth", ".pt", ".th", ".bin", ".ckpt")))
