"""Ray's overhead and scaling for the same small build, measured in one run on this machine.

    python benchmarks/build.py [--units 32] [--steps 192]

(a) in-process, no Ray, one single-threaded worker; (b) local Ray, one single-threaded actor;
(c) local Ray, two single-threaded actors. Targets: (b)/(a) <= 1.15 and (b)/(c) >= 1.6 on 2 cores.
Ray's own start-up is excluded (a cluster is already running when a job is submitted); actor
start-up and model loading are included.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loupe.jobs.build import execute  # noqa: E402
from loupe.jobs.build.run import run_build  # noqa: E402
from loupe.jobs.build.config import parse_config  # noqa: E402


def config(url: str, units: int, steps: int, actors: int) -> dict:
    return {
        "atlas": {"url": url},
        "models": [{"id": "r20", "source": "loupe.pipeline.models.cifar_resnet:resnet20", "weights": "none",
                    "layers": ["layer2", "layer3"], "units": f"0-{units - 1}"}],
        "render": {"channel": {"size": 32, "steps": steps, "units_per_item": 4}},
        "resources": {"cpus_per_actor": 1, "max_actors": actors, "max_in_flight_per_actor": 2},
    }


def timed(executor: str, units: int, steps: int, actors: int, root: Path) -> float:
    url = str(root / f"{executor}-{actors}")
    started = time.perf_counter()
    summary = run_build(parse_config(config(url, units, steps, actors)), executor=executor, progress=False,
                        log=lambda _: None, threads=1)
    assert summary.published, summary.lines()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=32, help="units per layer (2 layers)")
    parser.add_argument("--steps", type=int, default=192)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    execute.connect_ray(None, num_cpus=2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        timed("local", 4, 2, 1, root / "warmup")
        in_process = timed("local", args.units, args.steps, 1, root)
        one_actor = timed("ray", args.units, args.steps, 1, root)
        two_actors = timed("ray", args.units, args.steps, 2, root)
    items = 2 * args.units // 4
    print(f"build: 2 layers x {args.units} units, {items} items, {args.steps} steps, 32 px, CIFAR ResNet-20")
    print(f"(a) in-process, 1 thread:      {in_process:7.2f} s")
    print(f"(b) Ray, 1 actor x 1 thread:   {one_actor:7.2f} s   overhead (b)/(a) = {one_actor / in_process:.3f}  (target <= 1.15)")
    print(f"(c) Ray, 2 actors x 1 thread:  {two_actors:7.2f} s   speed-up (b)/(c) = {one_actor / two_actors:.2f}  (target >= 1.6)")


if __name__ == "__main__":
    main()
