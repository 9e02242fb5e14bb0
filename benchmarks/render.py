"""Feature-visualization speed: Loupe's batched renderer against the way common PyTorch ports render.

Baseline (measured in the same run, same machine): one unit at a time, the whole network runs on
every step, the 128 px image is upsampled to 224 before the model, forward hooks on every module
(as Lucent's hook_model), and the model's weights left trainable as users load them
(`model.eval()` only), so backward also computes weight gradients. `--baseline-frozen` freezes
them instead, a stricter baseline.

Loupe: `render_units` with batch sizes 1, 8 and 32: 128 px fed as is, forward stopped right after
the layer, weights frozen, redirected ReLU for the first 16 steps.

    python benchmarks/render.py                        # full: 512 steps (slow on a laptop CPU)
    python benchmarks/render.py --steps 16 --units 2   # quick look; per-unit times scale with steps

Per-step cost does not change with the step count, so ratios measured at a few steps hold at 512.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

# On a shared machine, busy-waiting OpenMP threads slow each other down by an order of magnitude
# whenever another process is busy; passive waiting keeps both sides of the comparison honest.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loupe.pipeline.featurevis import RenderSettings, param, render_units, transforms  # noqa: E402
from loupe.pipeline.models import LoadedModel, load_model  # noqa: E402

CASES = {"googlenet": ("torchvision:googlenet", "inception4a"), "mobilenet_v2": ("torchvision:mobilenet_v2", "features.10")}


def baseline_render(lm: LoadedModel, module: torch.nn.Module, layer: str, unit: int, steps: int, size: int) -> None:
    """One unit, Lucent-style: hooks on every module, full forward, upsample to 224, Adam 0.05."""
    features: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            features[name] = output

        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in module.named_modules() if name]
    try:
        image = param.image(size).to(lm.device)
        optimizer = torch.optim.Adam(image.parameters(), lr=0.05)
        pipeline = transforms.compose(transforms.standard_transforms)
        for _ in range(steps):
            optimizer.zero_grad()
            x = pipeline(image())
            x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=True)
            module(lm.normalize(x))
            loss = -features[layer][:, unit].mean()
            loss.backward()
            optimizer.step()
    finally:
        for handle in handles:
            handle.remove()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=512, help="optimization steps per render (default 512)")
    parser.add_argument("--units", type=int, default=2, help="units rendered by the baseline and by batch size 1")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    parser.add_argument("--size", type=int, default=128, help="image size in pixels (default 128)")
    parser.add_argument("--models", default="googlenet,mobilenet_v2", help=f"any of {', '.join(CASES)}")
    parser.add_argument("--weights", default="none", help="weights for both models (default: none, random init)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="Loupe's forward precision")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="Loupe: keep NCHW memory format (channels_last is the default)")
    parser.add_argument("--repeats", type=int, default=1, help="time every configuration this often (interleaved), keep the best")
    parser.add_argument("--baseline-frozen", action="store_true", help="freeze the baseline's weights too")
    args = parser.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, steps {args.steps}, size {args.size}px, "
          f"best of {args.repeats}")
    header = f"{'model':<13} {'layer':<12} {'method':<22} {'units':>5} {'seconds':>9} {'s/unit':>9} {'units/s':>9} {'vs base':>8}"
    for name in args.models.split(","):
        source, layer = CASES[name]
        lm = load_model(source, weights=args.weights, device=args.device)
        print(f"\n{lm.describe()}\n{header}")
        baseline_module = copy.deepcopy(lm.module)
        baseline_module.requires_grad_(not args.baseline_frozen)
        units = list(range(args.units))
        settings = RenderSettings(size=args.size, steps=args.steps, precision=args.precision, channels_last=args.channels_last)
        runs = {"baseline": (len(units), lambda: [baseline_render(lm, baseline_module, layer, u, args.steps, args.size) for u in units])}
        for batch in batch_sizes:
            n = max(batch, args.units)
            runs[f"loupe batch {batch}"] = (n, lambda n=n, batch=batch: render_units(lm, layer, range(n), settings=settings, images_per_step=batch))
        best = {label: float("inf") for label in runs}
        for _ in range(args.repeats):  # interleaved, so a noisy spell hits every configuration alike
            for label, (_, fn) in runs.items():
                best[label] = min(best[label], timed(fn))
        base_per_unit = best["baseline"] / len(units)
        for label, (n, _) in runs.items():
            per_unit = best[label] / n
            shown = label + (" (frozen)" if label == "baseline" and args.baseline_frozen else "")
            print(f"{name:<13} {layer:<12} {shown:<22} {n:>5} {best[label]:>9.2f} {per_unit:>9.3f} "
                  f"{1 / per_unit:>9.3f} {base_per_unit / per_unit:>7.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
