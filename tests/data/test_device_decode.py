"""Device decoding (`LoaderOptions(decode="device")`) sees what the Pillow path sees: same batches,
positions, keys and skips, pixels within a stated tolerance, non-JPEGs and CMYK exactly Pillow's."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from loupe.pipeline.data import DatasetError, LoaderOptions, iter_batches, list_images
from loupe.pipeline.data import device_decode
from loupe.pipeline.data.decode import decode_image
from loupe.pipeline.data.device_decode import decode_jpegs, jpeg_orientation, orient
from loupe.pipeline.scan import ScanOptions, scan_dataset
from tests.scan.helpers import corrupt_files, png_bytes, tiny_model, write_folder

SIZE, RESIZE = 32, 36
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]

#: Largest allowed mean and max |device - Pillow| in grey levels. CPU: torchvision and Pillow both
#: decode with libjpeg-turbo and torch's uint8 antialias kernel is Pillow's up to rounding (measured
#: over 35 JPEGs: mean <= 0.052, max 1). CUDA: nvJPEG's IDCT and chroma upsampling and the float
#: resize differ more (float resize alone measured mean <= 0.23, max 1; nvJPEG unmeasured: no GPU).
TOLERANCE = {"cpu": (0.1, 2), "cuda": (2.0, 48)}

#: (height, width): landscape, portrait, smaller than the crop (zero padding), the crop size, the
#: resize size (no resize), very wide, odd sizes.
SHAPES = [(60, 90), (90, 50), (20, 25), (SIZE, SIZE), (RESIZE, RESIZE), (30, 100), (37, 41)]


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour gradients plus noise: JPEG-like content, different in every corner."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    channels = [128 + 100 * np.sin(x / 7 + y / 11 + seed), 128 + 100 * np.cos(x / 5 - y / 9),
                255 * x / max(width - 1, 1)]
    return np.clip(np.stack(channels, -1) + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)


def jpeg(array: np.ndarray, mode: str | None = None, **params) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="JPEG", quality=90, **params)
    return buffer.getvalue()


def as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def device_decode_one(data: bytes, device: str) -> torch.Tensor:
    [image] = decode_jpegs([as_tensor(data)], [jpeg_orientation(data)], SIZE, RESIZE, device)
    assert image is not None and image.device.type == device
    return image.cpu()


def assert_close(device_images: torch.Tensor, pillow_images, device: str) -> None:
    pillow = torch.as_tensor(np.asarray(pillow_images))
    assert device_images.shape == pillow.shape and device_images.dtype == torch.uint8
    diff = (device_images.cpu().int() - pillow.int()).abs().float()
    mean_limit, max_limit = TOLERANCE[device]
    assert diff.mean() <= mean_limit and diff.max() <= max_limit, (diff.mean().item(), diff.max().item())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """JPEGs of every shape, a greyscale and a CMYK JPEG, a PNG, and broken files."""
    files = {f"a{i}_{h}x{w}.jpg": jpeg(photo(h, w, i)) for i, (h, w) in enumerate(SHAPES)}
    files["b_grey.jpg"] = jpeg(photo(40, 30, 7)[..., 1])
    files["c_cmyk.jpg"] = jpeg(photo(30, 44, 8), mode="CMYK")
    files["d_photo.png"] = png_bytes(photo(50, 40, 9))
    broken = corrupt_files()
    files["e_truncated.jpg"] = broken["bad_truncated.jpg"]
    files["f_note.jpg"] = broken["bad_text.jpg"]
    files["g_empty.jpg"] = broken["bad_empty.jpg"]
    files["h_later.jpg"] = jpeg(photo(70, 45, 10))
    return list_images(str(write_folder(tmp_path_factory.mktemp("device_decode"), files)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
def test_device_decode_matches_pillow_for_every_shape(shape, device):
    data = jpeg(photo(*shape, seed=sum(shape)))
    assert_close(device_decode_one(data, device), decode_image(data, SIZE, RESIZE), device)


def test_a_batch_decodes_together_in_order():
    arrays = [photo(h, w, i) for i, (h, w) in enumerate(SHAPES)]
    data = [jpeg(a) for a in arrays]
    decoded = decode_jpegs([as_tensor(d) for d in data], [1] * len(data), SIZE, RESIZE, "cpu")
    for image, one in zip(decoded, data):
        assert_close(image, decode_image(one, SIZE, RESIZE), "cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_exif_orientation_is_applied(device):
    array = photo(40, 64, 3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = jpeg(array, exif=exif.tobytes())
    assert jpeg_orientation(rotated) == 6
    got = device_decode_one(rotated, device)
    assert_close(got, decode_image(rotated, SIZE, RESIZE), device)
    unrotated = decode_image(jpeg(array), SIZE, RESIZE)
    assert (got.int() - torch.from_numpy(unrotated).int()).abs().float().mean() > 20


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_is_pillows_exif_transpose(orientation):
    """The CUDA path orients by hand (torchvision does it on the CPU only): same as Pillow, exactly."""
    array = photo(5, 7, orientation)
    image = Image.fromarray(array)
    image.getexif()[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(image)).transpose(2, 0, 1)
    got = orient(torch.from_numpy(array).permute(2, 0, 1), orientation)
    assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(expected)))


@pytest.mark.parametrize("device", DEVICES)
def test_greyscale_jpeg_becomes_rgb(device):
    data = jpeg(photo(40, 30, 7)[..., 1])
    assert Image.open(io.BytesIO(data)).mode == "L" and jpeg_orientation(data) == 1
    got = device_decode_one(data, device)
    assert got.shape == (3, SIZE, SIZE)
    assert torch.equal(got[0], got[1]) and torch.equal(got[1], got[2])
    assert_close(got, decode_image(data, SIZE, RESIZE), device)


def test_only_plain_jpegs_are_routed_to_the_device():
    assert jpeg_orientation(jpeg(photo(8, 8, 0))) == 1
    assert jpeg_orientation(jpeg(photo(8, 8, 0), mode="CMYK")) is None  # Pillow's CMYK rule is the reference
    assert jpeg_orientation(png_bytes(photo(8, 8, 0))) is None
    assert jpeg_orientation(b"\xff\xd8\xff" + b"\x00" * 20) is None  # JPEG signature, unreadable header
    assert jpeg_orientation(b"") is None and jpeg_orientation(None) is None


def batches(listing, decode: str, workers: int, device: str = "cpu") -> list:
    options = LoaderOptions(images_per_batch=5, workers=workers, decode=decode)
    return list(iter_batches(listing, SIZE, RESIZE, options=options, device=device))


def assert_same_batches(device_batches: list, pillow_batches: list, device: str) -> None:
    assert len(device_batches) == len(pillow_batches)
    for got, expected in zip(device_batches, pillow_batches):
        assert (got.start, got.stop) == (expected.start, expected.stop)
        np.testing.assert_array_equal(got.positions, expected.positions)
        np.testing.assert_array_equal(got.keys, expected.keys)
        assert got.skipped == expected.skipped
        assert got.images.device.type == device
        assert_close(got.images, expected.images, device)


@pytest.mark.parametrize("workers", [0, 1])
def test_iter_batches_with_device_decode_matches_pillow(folder, workers):
    assert_same_batches(batches(folder, "device", workers), batches(folder, "pillow", workers), "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG)")
def test_iter_batches_decodes_on_cuda(folder):
    assert_same_batches(batches(folder, "device", 1, "cuda"), batches(folder, "pillow", 1), "cuda")


def test_fallbacks_equal_pillow_and_broken_files_are_skipped_with_reasons(folder):
    pillow, device = batches(folder, "pillow", 0), batches(folder, "device", 0)
    ids = folder.ids()
    rows = {}
    for batch in device:
        for position, image in zip(batch.positions.tolist(), batch.images):
            rows[ids[position - folder.start]] = image
    expected = {}
    for batch in pillow:
        for position, image in zip(batch.positions.tolist(), batch.images):
            expected[ids[position - folder.start]] = image
    for name in ("c_cmyk.jpg", "d_photo.png"):
        assert torch.equal(rows[name], expected[name]), name
    skipped = {s.image_id: s.reason for b in device for s in b.skipped}
    assert set(skipped) == {"e_truncated.jpg", "f_note.jpg", "g_empty.jpg"}
    assert "truncated" in skipped["e_truncated.jpg"] and "not an image" in skipped["f_note.jpg"]
    assert skipped["g_empty.jpg"] == "empty file"
    assert len(rows) == len(folder) - 3 and "h_later.jpg" in rows


def test_a_jpeg_torchvision_rejects_gets_pillow_exactly(folder, monkeypatch):
    """nvJPEG refuses some files libjpeg-turbo takes (progressive on some GPUs, odd markers):
    simulated by a decoder that fails on one file, which must then come out exactly as Pillow's."""
    name = "a1_90x50.jpg"
    victim = as_tensor((Path(folder.root) / name).read_bytes())
    real, refused = device_decode._decode, []

    def picky(data, device):
        if any(torch.equal(t, victim) for t in data):
            refused.append(len(data))
            raise RuntimeError("simulated decoder failure")
        return real(data, device)

    monkeypatch.setattr(device_decode, "_decode", picky)
    device, pillow = batches(folder, "device", 0), batches(folder, "pillow", 0)
    assert_same_batches(device, pillow, "cpu")
    position = folder.start + folder.ids().index(name)
    [(got, expected)] = [(a, b) for a, b in zip(device, pillow) if position in a.positions]
    row = int(np.searchsorted(got.positions, position))
    assert torch.equal(got.images[row], expected.images[row])
    assert refused[-1] == 1, "the batch failed as a whole, then the file alone"


def test_unknown_decode_value_is_refused_naming_the_field():
    with pytest.raises(DatasetError, match="loader.decode"):
        LoaderOptions(decode="nvjpeg")


def test_scan_with_device_decode_matches_the_pillow_scan(tmp_path):
    """Images of clearly different brightness: the strongest images per unit cannot swap places
    over a grey level or two, and the statistics stay within rounding of the Pillow scan."""
    size = 16
    rng = np.random.default_rng(5)
    files = {}
    for i in range(9):
        h, w = [(40, 60), (60, 40), (12, 14), (16, 16), (33, 21)][i % 5]
        array = np.clip(25 * i + 10 + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)
        files[f"img_{i}.jpg"] = jpeg(array)
    files["img_x.png"] = png_bytes(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    files["img_y.jpg"] = b"not an image"
    listing = list_images(str(write_folder(tmp_path, files)))
    model = tiny_model(size)
    results = {
        decode: scan_dataset(model, listing, ["conv1", "conv3"], options=ScanOptions(k=3),
                             loader=LoaderOptions(images_per_batch=4, workers=0, decode=decode))
        for decode in ("pillow", "device")
    }
    pillow, device = results["pillow"], results["device"]
    assert device.scanned == pillow.scanned == 10 and device.skipped == pillow.skipped
    for name in ("conv1", "conv3"):
        a, b = pillow.layers[name], device.layers[name]
        np.testing.assert_array_equal(a.top.image_index, b.top.image_index)
        np.testing.assert_array_equal(a.bottom.image_index, b.bottom.image_index)
        for stat in ("act_mean", "max_mean"):
            np.testing.assert_allclose(a.statistics()[stat], b.statistics()[stat], atol=2e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_read_images_decodes_as_the_device_scan_did(folder, device):
    """Example pictures re-read their images: with decode="device" they get the scan's own pixels,
    Pillow's original sizes (for crop boxes), and the same skips."""
    from loupe.pipeline.data.loader import read_images

    local = np.arange(len(folder))
    scanned = batches(folder, "device", 0, device)
    decoded = read_images(folder, local, SIZE, RESIZE, decode="device", device=device)
    pillow = read_images(folder, local, SIZE, RESIZE)
    np.testing.assert_array_equal(decoded.positions, np.concatenate([b.positions for b in scanned]))
    np.testing.assert_array_equal(decoded.images, torch.cat([b.images for b in scanned]).cpu().numpy())
    np.testing.assert_array_equal(decoded.positions, pillow.positions)
    np.testing.assert_array_equal(decoded.original_sizes, pillow.original_sizes)
    assert decoded.skipped == pillow.skipped
    with pytest.raises(DatasetError, match="loader.decode"):
        read_images(folder, local, SIZE, RESIZE, decode="nvjpeg")
