"""Turn encoded image bytes into the model's input: decode, resize, centre-crop, uint8 RGB.

This is torchvision's eval recipe (`Resize(resize_size)` on the shorter side, then
`CenterCrop(input_size)`) done with Pillow alone, so a scan sees exactly what users expect.
EXIF orientation is applied first, as image viewers do, so crop boxes match what people see.
A file that cannot become an image raises `ImageDecodeError` with a short reason; callers skip
it and count it, never fail.

Every Pillow mode becomes 8-bit RGB by one rule (`to_rgb`):
- 8-bit modes (1, L, P, RGB, CMYK, YCbCr, LAB, HSV, ...) convert with Pillow's own conversion;
- 16- and 32-bit integer grey (I;16*, I, as 16-bit PNGs open) is scaled from 0..65535 to 0..255
  (x / 257, rounded), not clipped; values outside 0..65535 are skipped with a reason;
- 32-bit float grey (F) is read as 0..1 and scaled to 0..255; NaN or values outside 0..1 are
  skipped with a reason (their range is unknowable);
- transparency (RGBA, LA, PA, RGBa, La, P or L or RGB with a transparency key) is composited over
  white, as a browser shows the image on a white page; the alpha channel is not fed to the model.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageDecodeError(Exception):
    """One image could not be decoded; `reason` says why in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_image(data: bytes | None, input_size: int, resize_size: int) -> np.ndarray:
    """Decode `data` into a (3, input_size, input_size) uint8 RGB array, or raise ImageDecodeError."""
    return decode_image_with_size(data, input_size, resize_size)[0]


def decode_image_with_size(data: bytes | None, input_size: int, resize_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode like `decode_image`, and also return the decoded image's (height, width) after EXIF
    rotation: the original pixel frame that example crop boxes are mapped back to."""
    if data is None or len(data) == 0:
        raise ImageDecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                ImageOps.exif_transpose(image, in_place=True)
                rgb = to_rgb(image)
    except UnidentifiedImageError:
        if _has_image_signature(data):
            raise ImageDecodeError("truncated or corrupt (image header present, contents unreadable)") from None
        raise ImageDecodeError("not an image (unrecognized format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"truncated or corrupt ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop a scan
        raise ImageDecodeError(f"decoder failed ({type(exc).__name__}: {exc})") from None
    return resize_and_crop(rgb, input_size, resize_size), (rgb.size[1], rgb.size[0])


#: What transparent pixels are composited over.
BACKGROUND = (255, 255, 255)
_EIGHT_BIT = {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB by the module's rule, or raise ImageDecodeError."""
    mode = image.mode
    if mode in _ALPHA or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in _EIGHT_BIT:
        return image.convert("RGB")
    if mode == "I" or mode.startswith("I;16"):
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageDecodeError(f"{mode} image with values outside 0..65535 (min {values.min()}, max {values.max()})")
        return _grey((values * 255 + 32767) // 65535)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.size and not np.isfinite(values).all():
            raise ImageDecodeError("float image with NaN or infinite values")
        if values.size and (values.min() < 0.0 or values.max() > 1.0):
            raise ImageDecodeError(f"float image with values outside 0..1 (min {values.min():.4g}, max {values.max():.4g})")
        return _grey(np.rint(values * 255.0))
    raise ImageDecodeError(f"unsupported image mode {mode!r}")


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(values.astype(np.uint8), mode="L").convert("RGB")


_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def _has_image_signature(data: bytes) -> bool:
    """Whether `data` starts like a known image format (so it is damaged, not something else)."""
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def resize_and_crop(image: Image.Image, input_size: int, resize_size: int) -> np.ndarray:
    """Shorter side to `resize_size` (bilinear, antialiased), centre crop `input_size`, as CHW uint8."""
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError("image has no pixels")
    new_h, new_w = resized_shape(height, width, resize_size)
    size = (new_w, new_h)
    if size != image.size:
        image = image.resize(size, Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return center_crop(array, input_size).transpose(2, 0, 1).copy()


def resized_shape(height, width, resize_size: int):
    """(height, width) after `resize_and_crop`'s shorter-side resize: the shorter side becomes
    `resize_size`, the other is truncated; ints for ints, int64 arrays for arrays."""
    height, width = np.asarray(height), np.asarray(width)
    portrait = width <= height
    new_h = np.where(portrait, (resize_size * height / width).astype(np.int64), resize_size)
    new_w = np.where(portrait, resize_size, (resize_size * width / height).astype(np.int64))
    if new_h.ndim == 0:
        return int(new_h), int(new_w)
    return new_h, new_w


def input_box_to_image_box(boxes: np.ndarray, original_size: np.ndarray, input_size: int, resize_size: int) -> np.ndarray:
    """Map half-open (y0, x0, y1, x1) boxes in the model-input frame to the original image's pixel
    frame (float64 [..., 4]), inverting `resize_and_crop` exactly, so a stored crop can be found in
    the original file: add the centre crop's offset (or remove its zero padding), then scale by
    original / resized size. `original_size` is (height, width) [..., 2]; it broadcasts with the boxes."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape [..., 4] (y0, x0, y1, x1), got {boxes.shape}")
    sizes = np.asarray(original_size, dtype=np.int64)
    if sizes.shape[-1:] != (2,):
        raise ValueError(f"original_size must have shape [..., 2] (height, width), got {sizes.shape}")
    shape = np.broadcast_shapes(boxes.shape[:-1], sizes.shape[:-1])
    boxes, sizes = np.broadcast_to(boxes, (*shape, 4)), np.broadcast_to(sizes, (*shape, 2))
    height, width = sizes[..., 0], sizes[..., 1]
    if np.any(sizes < 1):
        raise ValueError(f"original_size must be positive (height, width), got {sizes[np.any(sizes < 1, axis=-1)][0]}")
    new_h, new_w = resized_shape(height, width, resize_size)
    offsets = []
    for new in (new_h, new_w):  # center_crop's offset into the resized image (negative: zero padding)
        pad = np.maximum(input_size - new, 0)
        offsets.append(np.round((new + pad - input_size) / 2.0).astype(np.int64) - pad // 2)
    top, left = offsets
    return np.stack([(boxes[..., 0] + top) * height / new_h, (boxes[..., 1] + left) * width / new_w,
                     (boxes[..., 2] + top) * height / new_h, (boxes[..., 3] + left) * width / new_w], axis=-1)


def center_crop(array: np.ndarray, size: int) -> np.ndarray:
    """torchvision's CenterCrop on an HWC array: zero padding when the image is smaller."""
    height, width = array.shape[:2]
    if height < size or width < size:
        pad_h, pad_w = max(size - height, 0), max(size - width, 0)
        array = np.pad(
            array, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)), mode="constant"
        )
        height, width = array.shape[:2]
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return array[top:top + size, left:left + size]
