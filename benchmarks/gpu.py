"""Render and scan throughput against the card's own limits, and the projected cost of an InceptionV1 atlas.

For torchvision GoogLeNet (InceptionV1) at `inception4a_pre_relu`, on the fastest device here
(CUDA when present, else CPU), in one process:

1. **Limit**: the forward+backward image rate to the layer (frozen weights, gradient to the input,
   forward stopped after the layer: exactly the work of one render step per image), at the
   largest batch.
2. **Renders**: `render_units` unit-steps/s at each unit batch, for each speed option (fp32,
   bf16 autocast, channels_last, both, and those compiled with torch.compile: "reduce-overhead",
   i.e. inductor plus CUDA graphs, on CUDA), measured as the difference between a long and a
   short render so set-up, compile and the final measurement cancel; and as a ratio to (1). The
   options' pictures are compared with fp32's (mean absolute difference, 0..255).
3. **Scan**: images/s of a scan of every Lucid layer (top/bottom-k, exact statistics, sketch) on
   decoded batches, as a ratio to the plain forward rate to the deepest layer; the JPEG decode
   rate on the CPU (Pillow, the loader's path, per worker) and, on CUDA, with
   `torchvision.io.decode_jpeg(device="cuda")`, as images/s; and whole scans from JPEG files
   through the loader (`scan_dataset`) with Pillow workers (one per core, at most 16) and with
   `decode: device` (nvJPEG on CUDA), each as a ratio to the plain forward.
4. **Projection**: hours for every unit of every Lucid layer (channel kind, 512 steps, best batch;
   each layer's rate scaled by its own forward+backward cost) plus a 1.28M-image scan.

Weights are random (`weights: none`): speed does not depend on their values. Pictures are
synthetic. `--smoke` shrinks everything (64 px, batches 2 and 4, 3 steps) to run in well under a
minute on a CPU; its figures only show that every path runs.

    python benchmarks/gpu.py            # full (about 5 minutes on one GPU; long on a CPU)
    python benchmarks/gpu.py --smoke    # every path, tiny sizes
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loupe.pipeline.data import Listing  # noqa: E402
from loupe.pipeline.data.decode import decode_image  # noqa: E402
from loupe.pipeline.data.loader import Batch  # noqa: E402
from loupe.pipeline.featurevis import RenderSettings, render_units  # noqa: E402
from loupe.pipeline.models import LoadedModel, Preprocessing, capture, load_model  # noqa: E402
from loupe.pipeline.scan import ScanOptions, Scanner  # noqa: E402

LAYER = "inception4a_pre_relu"
#: Lucid's InceptionV1 layers (conv2d0..2, mixed3a..5b), by their torchvision names.
LUCID_LAYERS = ["conv1", "conv2", "conv3"] + [f"inception{b}_pre_relu" for b in
                                               ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")]
#: Render options: (precision, channels_last, compiled). Compiled rows use torch.compile's
#: "reduce-overhead" mode on CUDA (inductor plus CUDA graphs) and "default" on a CPU.
OPTIONS = {"fp32": ("fp32", False, False), "bf16": ("bf16", False, False), "channels_last": ("fp32", True, False),
           "bf16+channels_last": ("bf16", True, False), "channels_last+compile": ("fp32", True, True),
           "bf16+channels_last+compile": ("bf16", True, True)}
ATLAS_STEPS = 512
ATLAS_IMAGES = 1_281_167


@dataclass(frozen=True)
class Sizes:
    size: int
    batches: tuple[int, ...]
    steps: int
    scan_images: int
    scan_batch: int
    decode_images: int
    compile_batches: tuple[int, ...] = ()  # batches the compiled rows run at (empty: all)
    compiled_rows: tuple[str, ...] = ()  # which compiled options run (empty: all)
    loader_workers: int = 0  # Pillow decoding processes for the scan from files (0: one per core, at most 16)


FULL = Sizes(size=224, batches=(8, 16, 32, 64, 128), steps=24, scan_images=1024, scan_batch=128, decode_images=512)
#: Smoke: one compiled row at the largest batch only (each compile takes 20 to 40 s on a CPU).
SMOKE = Sizes(size=64, batches=(2, 4), steps=3, scan_images=16, scan_batch=8, decode_images=8, compile_batches=(4,),
              compiled_rows=("channels_last+compile",), loader_workers=1)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - started


def forward_backward_rate(model: LoadedModel, layer: str, batch: int, size: int, repeats: int) -> float:
    """Images/s of forward to `layer` plus backward to the input (weights frozen), best of `repeats`."""
    for p in model.module.parameters():
        p.requires_grad_(False)
    x = torch.rand(batch, 3, size, size, device=model.device)
    with capture(model, [layer]) as cap:
        def step() -> None:
            image = x.clone().requires_grad_(True)
            cap.run(image)[layer].sum().backward()

        step()  # warm-up (kernel selection)
        best = min(timed(step, model.device) for _ in range(repeats))
    return batch / best


def forward_rate(model: LoadedModel, layer: str, batch: int, size: int, repeats: int) -> float:
    x = torch.rand(batch, 3, size, size, device=model.device)
    with capture(model, [layer]) as cap, torch.inference_mode():
        cap.run(x)
        best = min(timed(lambda: cap.run(x), model.device) for _ in range(repeats))
    return batch / best


def compile_mode(device: torch.device) -> str:
    """The torch.compile mode of the compiled rows: CUDA graphs where there is CUDA."""
    return "reduce-overhead" if device.type == "cuda" else "default"


def render_rate(model: LoadedModel, batch: int, sizes: Sizes, precision: str, channels_last: bool,
                compiled: bool = False) -> tuple[float, np.ndarray]:
    """Unit-steps/s of `render_units` at `batch` units (long minus short render), and the long render's pictures.

    The redirected ReLU (Lucid's first 16 steps, which always run eagerly) is off here, so every
    timed step is the steady-state step that makes up 97% of a 512-step render.
    """
    threads = torch.get_num_threads()
    mode = compile_mode(model.device) if compiled else "off"

    def run(steps: int) -> np.ndarray:
        settings = RenderSettings(size=sizes.size, steps=steps, precision=precision, channels_last=channels_last,
                                  threads=threads, compile=mode, redirected_relu=False)
        return render_units(model, LAYER, range(batch), "channel", settings, images_per_step=batch).images

    run(2)  # warm-up: kernel selection, and for compiled rows the compile (once per batch shape)
    short = timed(lambda: run(1), model.device)
    pictures: list[np.ndarray] = []
    long = timed(lambda: pictures.append(run(1 + sizes.steps)), model.device)
    return batch * sizes.steps / max(long - short, 1e-9), pictures[0]


def scan_rate(model: LoadedModel, sizes: Sizes) -> float:
    """Images/s of a scan of every Lucid layer on decoded batches (decoding excluded)."""
    rng = np.random.default_rng(0)
    ids = [f"img{i:07d}" for i in range(sizes.scan_images)]
    listing = Listing.build("folder", "synthetic", ids, {"path": ids})
    batches = []
    for start in range(0, sizes.scan_images, sizes.scan_batch):
        stop = min(start + sizes.scan_batch, sizes.scan_images)
        images = torch.from_numpy(rng.integers(0, 256, (stop - start, 3, sizes.size, sizes.size), dtype=np.uint8))
        batches.append(Batch(start, stop, np.arange(start, stop, dtype=np.int64), listing.keys[start:stop].copy(),
                             images.pin_memory() if model.device.type == "cuda" else images))
    scanner = Scanner(model, LUCID_LAYERS, ScanOptions(k=16, pooled=False))
    scanner.receptive_fields  # probed once per model, as every worker does
    scanner.scan(iter(batches[:1]), listing.slice(0, batches[0].stop), pad_to=sizes.scan_batch)  # warm-up
    seconds = timed(lambda: scanner.scan(iter(batches), listing, pad_to=sizes.scan_batch), model.device)
    return sizes.scan_images / seconds


def loader_scan_rates(model: LoadedModel, sizes: Sizes, files: list[bytes], workers: int) -> dict[str, float]:
    """Images/s of whole scans of every Lucid layer from JPEG files on disk, through the loader:
    Pillow in `workers` processes, and decoding on the model's device (nvJPEG on CUDA)."""
    import tempfile

    from loupe.pipeline.data import LoaderOptions, list_images
    from loupe.pipeline.scan import scan_dataset

    scanner = Scanner(model, LUCID_LAYERS, ScanOptions(k=16, pooled=False))
    scanner.receptive_fields  # noqa: B018 - probed once per model, as every worker does
    rates = {}
    with tempfile.TemporaryDirectory(prefix="loupe-gpu-bench-") as folder:
        for index, data in enumerate(files):
            Path(folder, f"img{index:07d}.jpg").write_bytes(data)
        listing = list_images(folder)
        for decode, label in (("pillow", f"cpu decode (Pillow, {workers} workers)"),
                              ("device", f"{model.device.type} decode (torchvision.io.decode_jpeg)")):
            loader = LoaderOptions(images_per_batch=sizes.scan_batch, workers=workers, decode=decode)
            scan_dataset(model, listing.slice(0, sizes.scan_batch), scanner, loader=loader)  # warm-up
            seconds = timed(lambda: scan_dataset(model, listing, scanner, loader=loader), model.device)
            rates[label] = len(files) / seconds
    return rates


def jpeg_files(count: int, rng: np.random.Generator) -> list[bytes]:
    """ImageNet-like JPEGs (500 x 375, quality 90) of smooth random content."""
    out = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (47, 63, 3), dtype=np.uint8)
        picture = Image.fromarray(coarse).resize((500, 375), Image.BILINEAR)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def decode_rates(files: list[bytes], size: int, device: torch.device) -> dict[str, float]:
    """Images/s of decode + resize + crop: Pillow on one CPU core (the loader's path, per worker);
    torchvision's nvJPEG on CUDA, when present."""
    started = time.perf_counter()
    for data in files:
        decode_image(data, size, int(size * 256 / 224))
    rates = {"cpu (Pillow, per worker)": len(files) / (time.perf_counter() - started)}
    if device.type == "cuda":
        from torchvision.io import decode_jpeg
        from torchvision.transforms.v2.functional import center_crop, resize

        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in files]

        def gpu() -> None:
            for start in range(0, len(tensors), 64):
                decoded = decode_jpeg(tensors[start:start + 64], device=device)
                for image in decoded:
                    center_crop(resize(image, [int(size * 256 / 224)], antialias=True), [size, size])

        gpu()
        rates["cuda (nvJPEG)"] = len(files) / timed(gpu, device)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: every path runs in well under a minute")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else FULL
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    started = time.perf_counter()
    model = load_model("torchvision:googlenet", "none", device=str(device),
                       preprocessing=Preprocessing(input_size=sizes.size, resize_size=int(sizes.size * 256 / 224)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"GoogLeNet (random weights) at {sizes.size} px on {name}{' [smoke]' if args.smoke else ''}")

    repeats = 2 if args.smoke else 5
    limit = forward_backward_rate(model, LAYER, max(sizes.batches), sizes.size, repeats)
    print(f"\n(1) limit: forward+backward to {LAYER}, batch {max(sizes.batches)}: {limit:,.1f} images/s")

    print(f"\n(2) renders of {LAYER} (channel kind): unit-steps/s, and / limit")
    print(f"{'option':>26} " + " ".join(f"{'batch ' + str(b):>18}" for b in sizes.batches) + "   max |diff| vs fp32")
    best = 0.0
    reference: dict[int, np.ndarray] = {}
    for option, (precision, channels_last, compiled) in OPTIONS.items():
        cells, diffs = [], []
        for batch in sizes.batches:
            skipped_row = sizes.compiled_rows and option not in sizes.compiled_rows
            if compiled and (skipped_row or (sizes.compile_batches and batch not in sizes.compile_batches)):
                cells.append("-")
                continue
            rate, pictures = render_rate(model, batch, sizes, precision, channels_last, compiled)
            reference.setdefault(batch, pictures)
            diffs.append(float(np.abs(pictures.astype(np.int16) - reference[batch]).mean()))
            cells.append(f"{rate:9,.1f} ({rate / limit:4.2f}x)")
            best = max(best, rate)
        difference = f"{max(diffs):.2f} / 255" if diffs else "-"
        print(f"{option:>26} " + " ".join(f"{c:>18}" for c in cells) + f"   {difference}")
    print(f"    (compiled rows: torch.compile mode '{compile_mode(device)}'"
          f"{'; smoke: one row, largest batch only' if sizes.compile_batches else ''}; the compile itself is not timed)")

    scan = scan_rate(model, sizes)
    plain = forward_rate(model, LUCID_LAYERS[-1], sizes.scan_batch, sizes.size, repeats)
    print(f"\n(3) scan of {len(LUCID_LAYERS)} Lucid layers, batch {sizes.scan_batch}: {scan:,.1f} images/s = "
          f"{scan / plain:.2f}x the plain forward ({plain:,.1f} images/s)")
    files = jpeg_files(max(sizes.decode_images, sizes.scan_images), np.random.default_rng(1))
    for path, rate in decode_rates(files[:sizes.decode_images], sizes.size, device).items():
        print(f"    JPEG decode {path}: {rate:,.1f} images/s")
    workers = sizes.loader_workers or min(16, os.cpu_count() or 1)
    for path, rate in loader_scan_rates(model, sizes, files[:sizes.scan_images], workers).items():
        print(f"    scan from JPEG files, {path}: {rate:,.1f} images/s = {rate / plain:.2f}x the plain forward")

    cost = {layer: 1.0 / forward_backward_rate(model, layer, max(sizes.batches), sizes.size, repeats)
            for layer in LUCID_LAYERS}
    units = {layer: model.layer(layer).channels for layer in LUCID_LAYERS}
    # The best measured rate is for LAYER; a step at another layer costs its own forward+backward.
    seconds = sum(units[l] * ATLAS_STEPS / (best * cost[LAYER] / cost[l]) for l in LUCID_LAYERS)
    scan_seconds = ATLAS_IMAGES / scan
    print(f"\n(4) projection on this device: {sum(units.values())} units x {ATLAS_STEPS} steps = "
          f"{seconds / 3600:.2f} h of renders + {scan_seconds / 3600:.2f} h to scan {ATLAS_IMAGES:,} images "
          f"= {(seconds + scan_seconds) / 3600:.2f} h (channel kind; the full Microscope set of kinds, 7 images "
          f"per unit, about {(7 * seconds + scan_seconds) / 3600:.2f} h)")
    print(f"\nran in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
