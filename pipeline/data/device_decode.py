"""Decode a batch's JPEGs on the model's device, then resize and centre-crop them there.

On a GPU scan, Pillow decoding in a few worker processes is what the GPU waits for; nvJPEG
decodes a whole batch on the GPU instead (libjpeg-turbo when the device is the CPU, so the same
path runs and is tested without a GPU). The output follows `decode.decode_image`'s recipe with
torch ops: EXIF orientation, every JPEG to RGB, shorter side to `resize_size` (antialiased
bilinear, output size from `decode.resized_shape`), centre crop `input_size` with zero padding
(torchvision's `center_crop`: the same offsets and padding as `decode.center_crop`). Pixels differ
from Pillow's by decoder (IDCT, chroma upsampling) and resize-kernel rounding, so Pillow stays the
default wherever scans must be bit-exact.

Only JPEGs Pillow reads as 8-bit grey or RGB are sent here (`jpeg_orientation` says which); a
JPEG torchvision still cannot decode comes back as None, for the caller's Pillow fallback.
"""

from __future__ import annotations

import io
import warnings
from typing import Callable, Sequence

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode

from loupe.pipeline.data.decode import resized_shape

__all__ = ["decode_jpegs", "decode_jpegs_with_sizes", "jpeg_orientation", "orient", "resize_and_crop_tensor"]

_JPEG_SIGNATURE = b"\xff\xd8\xff"
_DEVICE_MODES = {"L", "RGB"}  # CMYK/YCCK JPEGs go to Pillow: its inverted-Adobe CMYK rule is the reference
_ORIENTATION_TAG = 0x0112

#: Pillow's `ImageOps.exif_transpose` for each EXIF orientation, on (..., H, W) tensors.
_ORIENTATIONS: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    2: lambda t: t.flip(-1),
    3: lambda t: t.flip(-2, -1),
    4: lambda t: t.flip(-2),
    5: lambda t: t.transpose(-2, -1),
    6: lambda t: t.rot90(-1, (-2, -1)),
    7: lambda t: t.flip(-2, -1).transpose(-2, -1),
    8: lambda t: t.rot90(1, (-2, -1)),
}


def jpeg_orientation(data: bytes | bytearray | None) -> int | None:
    """The EXIF orientation (1 = as stored) of a JPEG the device decoder should take, or None when
    the image must go through Pillow: not a JPEG, a header Pillow cannot read, a decompression bomb
    (Pillow skips those, so must this path), or a mode other than 8-bit grey/RGB. Reads the header
    only, so a worker can route images without decoding them."""
    if not data or bytes(data[:3]) != _JPEG_SIGNATURE:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in ("JPEG", "MPO") or image.mode not in _DEVICE_MODES:
                    return None
                value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - anything odd is Pillow's to decode or reject with a reason
        return None
    return value if isinstance(value, int) and value in _ORIENTATIONS else 1


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a (..., H, W) tensor exactly as Pillow's `exif_transpose` does.
    Used on every device, with Pillow's reading of the tag, so one parser decides the orientation
    (torchvision's own `apply_exif_orientation` works on the CPU only)."""
    transform = _ORIENTATIONS.get(orientation)
    return image if transform is None else transform(image)


def resize_and_crop_tensor(image: torch.Tensor, input_size: int, resize_size: int) -> torch.Tensor:
    """Shorter side to `resize_size` (antialiased bilinear), centre crop `input_size`, on the image's
    device: `decode.resize_and_crop`'s output size and crop offsets, uint8 (3, input_size, input_size)."""
    height, width = image.shape[-2:]
    new_h, new_w = resized_shape(height, width, resize_size)
    resized = TF.resize(image, [new_h, new_w], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(resized, [input_size, input_size])


def decode_jpegs(data: Sequence[torch.Tensor], orientations: Sequence[int], input_size: int, resize_size: int,
                 device: torch.device | str) -> list[torch.Tensor | None]:
    """Decode JPEG bytes (1-D uint8 CPU tensors) together on `device` into uint8 (3, input_size,
    input_size) RGB tensors there; None for each image torchvision cannot decode (the caller's
    Pillow fallback decides whether it is usable). `orientations` come from `jpeg_orientation`."""
    return decode_jpegs_with_sizes(data, orientations, input_size, resize_size, device)[0]


def decode_jpegs_with_sizes(data: Sequence[torch.Tensor], orientations: Sequence[int], input_size: int,
                            resize_size: int, device: torch.device | str
                            ) -> tuple[list[torch.Tensor | None], list[tuple[int, int] | None]]:
    """`decode_jpegs`, plus each decoded image's (height, width) after orientation: the original
    pixel frame example crop boxes are mapped back to (as `decode_image_with_size` reports)."""
    device = torch.device(device)
    decoded = _decode_all(list(data), device)
    images: list[torch.Tensor | None] = []
    sizes: list[tuple[int, int] | None] = []
    for image, orientation in zip(decoded, orientations):
        if image is None:
            images.append(None)
            sizes.append(None)
            continue
        image = orient(image, orientation)
        sizes.append((int(image.shape[-2]), int(image.shape[-1])))
        images.append(resize_and_crop_tensor(image, input_size, resize_size))
    return images, sizes


def _decode_all(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """One batched decode; if it fails (torchvision returns nothing when any image fails), each
    image alone, so only the undecodable ones are lost."""
    if not data:
        return []
    try:
        return list(_decode(data, device))
    except Exception:  # noqa: BLE001 - the per-image pass below finds which image failed
        pass
    out: list[torch.Tensor | None] = []
    for one in data:
        try:
            out.append(_decode([one], device)[0])
        except Exception:  # noqa: BLE001 - CMYK, corrupt, unsupported on this device: Pillow's turn
            out.append(None)
    return out


def _decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    if device.type == "cuda":
        # torchvision's CUDA decoder writes its outputs from a stream of its own that does not wait
        # for ours, into memory the caching allocator may have just freed from kernels still queued
        # on ours: let those finish first (pytorch/vision#9606). Decoding still runs on the GPU.
        torch.cuda.current_stream(device).synchronize()
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders (for TorchCodec) with a warning on every call
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=False)
