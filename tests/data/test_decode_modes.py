"""Every Pillow mode decodes to the RGB a person would see, or is skipped with a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from loupe.pipeline.data.decode import ImageDecodeError, decode_image

SIZE = 16


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    """HWC uint8, at the image's own size (no resize, no crop)."""
    return decode_image(data, SIZE, SIZE).transpose(1, 2, 0)


def gradient16() -> np.ndarray:
    return (np.arange(SIZE * SIZE, dtype=np.uint32).reshape(SIZE, SIZE) * 257).astype(np.uint16)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grey_is_scaled_not_clipped(fmt):
    values = gradient16()  # 0 .. 65535 in steps of 257: exactly the 8-bit values 0..255
    image = Image.fromarray(values)  # uint16 -> mode I;16
    got = decode(encode(image, fmt))
    expected = np.rint(values / 257).astype(np.uint8)
    assert Image.open(io.BytesIO(encode(image, fmt))).mode in ("I", "I;16", "I;16B", "I;16L")
    np.testing.assert_array_equal(got, np.repeat(expected[..., None], 3, axis=2))
    assert got.mean() < 200, "a 16-bit image must not come out almost white"


def test_32_bit_integer_grey_outside_16_bits_is_skipped_with_a_reason():
    values = np.full((SIZE, SIZE), 70000, dtype=np.int32)
    with pytest.raises(ImageDecodeError, match="outside 0..65535"):
        decode(encode(Image.fromarray(values), "TIFF"))


def test_float_grey_in_unit_range_is_scaled_and_outside_it_skipped():
    values = np.linspace(0, 1, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    got = decode(encode(Image.fromarray(values), "TIFF"))
    np.testing.assert_array_equal(got[..., 0], np.rint(values.astype(np.float64) * 255).astype(np.uint8))
    with pytest.raises(ImageDecodeError, match="outside 0..1"):
        decode(encode(Image.fromarray(values * 300), "TIFF"))
    with pytest.raises(ImageDecodeError, match="NaN"):
        decode(encode(Image.fromarray(np.full((SIZE, SIZE), np.nan, dtype=np.float32)), "TIFF"))


def test_alpha_is_composited_over_white():
    rgba = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:, : SIZE // 2, 3] = 255  # left half opaque, right half fully transparent
    got = decode(encode(Image.fromarray(rgba)))
    assert (got[:, : SIZE // 2] == [255, 0, 0]).all()
    assert (got[:, SIZE // 2:] == [255, 255, 255]).all()
    half = rgba.copy()
    half[..., 3] = 128
    blended = decode(encode(Image.fromarray(half)))
    assert np.abs(blended.astype(int) - [255, 127, 127]).max() <= 1


def test_grey_with_alpha_and_palette_with_transparency():
    la = np.zeros((SIZE, SIZE, 2), dtype=np.uint8)
    la[..., 0] = 40
    la[: SIZE // 2, :, 1] = 255
    got = decode(encode(Image.fromarray(la, "LA")))
    assert (got[: SIZE // 2] == 40).all() and (got[SIZE // 2:] == 255).all()

    palette = Image.new("P", (SIZE, SIZE), 0)
    palette.putpalette([0, 0, 255] + [0, 255, 0] + [0, 0, 0] * 254)
    pixels = np.zeros((SIZE, SIZE), dtype=np.uint8)
    pixels[:, SIZE // 2:] = 1
    palette.putdata(pixels.ravel().tolist())
    data = encode(palette, transparency=0)  # index 0 (blue) is transparent
    assert Image.open(io.BytesIO(data)).mode == "P"
    got = decode(data)
    assert (got[:, : SIZE // 2] == [255, 255, 255]).all() and (got[:, SIZE // 2:] == [0, 255, 0]).all()


def test_cmyk_bilevel_and_grey_match_pillows_own_conversion():
    rng = np.random.default_rng(0)
    cmyk = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8), mode="CMYK")
    np.testing.assert_array_equal(decode(encode(cmyk, "TIFF")), np.asarray(cmyk.convert("RGB")))
    bilevel = Image.fromarray(rng.integers(0, 2, (SIZE, SIZE), dtype=np.uint8) * 255, mode="L").convert("1")
    np.testing.assert_array_equal(decode(encode(bilevel)), np.asarray(bilevel.convert("RGB")))
    grey = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8), mode="L")
    np.testing.assert_array_equal(decode(encode(grey)), np.asarray(grey.convert("RGB")))
