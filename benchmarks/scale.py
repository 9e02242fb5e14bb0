"""A SIMULATION of the build's control plane at ImageNet scale: everything real except the model compute.

Real: the config, the planner (keys, blocks, shards, reduces, scores), the Ray executor with a
pool of actors, the storage writer and completion records on an S3 API server on 127.0.0.1
(moto), the listing saved in blocks, every reduce (the real merge of the shards' partials, the
units and examples tables, the images table) and score item, and the publish (seal, manifest,
checksums, pointer swap).

Simulated:
  * the dataset listing: 1,281,167 ids synthesized in memory (no files, never listed from storage);
  * the compute of render and scan items: a sleep proportional to the item's cost (units x
    `--render-ms` per unit, images x `--scan-us` per image, compressed GPU times), then outputs of
    real shape: zero renders [units, 128, 128, 3] (tiny once compressed) with their objective and
    score columns, and per layer a scan partial of real size (top/bottom-16, exact sums and the
    quantile sketch of every unit, built by the real accumulator from a small batch of random
    reductions whose image positions lie in the shard);
  * no pooled activations and no example pictures (1.28M x 21k float16 maxima would be 50 GB on
    a laptop's S3 server); the reduce still merges every partial and writes every table.

Models: torchvision GoogLeNet (12 Lucid layers, 5,808 units) and ResNet-50 (conv1 and the 16
bottleneck blocks, 15,168 units), weights none (the control plane never sees weights), four render
kinds (channel, neuron, negative, diversity x 4) at 32 units per item, scan shards of about 10,000
images. Each scale (a fraction of the images, the units and the shards) runs in its own driver
process, so its peak memory is its own; the S3 server runs in this process and counts requests.

    python benchmarks/scale.py                           # 1/16, 1/4 and full scale
    python benchmarks/scale.py --fractions 0.0625 --actors 4   # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMAGES = 1_281_167
IMAGES_PER_SHARD = 10_000
GOOGLENET_LAYERS = ["conv1", "conv2", "conv3"] + [f"inception{b}_pre_relu" for b in
                                                  ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")]
RESNET_LAYERS = ["conv1"] + [f"layer{s}.{b}" for s, blocks in ((1, 3), (2, 4), (3, 6), (4, 3)) for b in range(blocks)]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


# ---- the S3 server, counting requests -------------------------------------------------------------
def serve_s3() -> tuple[str, Counter, object]:
    """moto's S3 API on 127.0.0.1 behind a counter; GET /__count returns the counts so far as JSON."""
    import logging

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request would drown the report

    app = DomainDispatcherApplication(create_backend_app)
    counts: Counter = Counter()
    lock = threading.Lock()

    def counting(environ, start_response):
        if environ.get("PATH_INFO") == "/__count":
            with lock:
                body = json.dumps(counts).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        with lock:
            counts[environ["REQUEST_METHOD"]] += 1
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, counting, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.port}", counts, server


def request_count(endpoint: str) -> int:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
    with opener.open(f"{endpoint}/__count", timeout=30) as response:
        return sum(json.loads(response.read()).values())


# ---- the simulated runner (runs in Ray actors) -----------------------------------------------------
def simulated_runner_class():
    """ItemRunner with the model compute replaced by the cost model; reduce and score items are real."""
    from loupe.jobs.build.runner import ItemRunner

    class SimulatedRunner(ItemRunner):
        WIDTHS: dict = {}  # model id -> layer -> units, set by the driver (pickled with the class)
        RENDER_S_PER_UNIT = 0.0
        SCAN_S_PER_IMAGE = 0.0
        METRICS = ""

        def __init__(self, model_config, atlas_url, version, storage_options=None, *, device=None, threads=None,
                     scan_context=None):
            from loupe.jobs.build.config import ModelConfig
            from loupe.storage import AtlasWriter

            self.config = ModelConfig.model_validate(model_config)
            self.model = SimpleNamespace(categories=None, device="cpu")  # reduces ask only for class names
            self.writer = AtlasWriter.resume(atlas_url, version, storage_options)
            self.scan_context = scan_context or {}
            self._bases = {}

        def execute(self, item):
            if item.stage == "scan":
                return self._scan(item)
            if item.stage == "fields":  # a probe is model compute: simulated scans need no fields
                return {"probed": False}
            if item.stage != "reduce":
                return super().execute(item)  # renders: self._render below; scores: the real ones
            started = time.perf_counter()
            tracemalloc.start()
            try:
                return super().execute(item)
            finally:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                self._metric({"stage": "reduce", "layer": item.spec.layer, "peak_bytes": peak,
                              "images_table": item.spec.write_images, "seconds": time.perf_counter() - started})

        def _metric(self, record: dict) -> None:
            with open(self.METRICS, "a") as out:
                out.write(json.dumps(record) + "\n")

        def _render(self, item):
            import numpy as np
            import pyarrow as pa

            from loupe.jobs.build.plan import SCORED_KIND, item_meta

            spec = item.spec
            time.sleep(len(spec.units) * self.RENDER_S_PER_UNIT)
            shape = (len(spec.units),) + ((spec.images_per_unit,) if spec.kind == "diversity" else ())
            images = np.zeros((*shape, spec.size, spec.size, 3), np.uint8)
            with self.writer.item(item.key, item_meta(item)) as out:
                out.write_renders(self.config.id, spec.layer, spec.kind, list(spec.units), images,
                                  np.zeros(shape, np.float32))
                if spec.kind == SCORED_KIND:
                    n = len(spec.units)
                    out.write_units(self.config.id, spec.layer, pa.table({
                        "unit": pa.array(np.asarray(spec.units, np.int32)),
                        "fv_activation": pa.array(np.random.rand(n)), "fv_robustness": pa.array(np.random.rand(n))}))
            return {}

        def _scan(self, item):
            from loupe.jobs.build.plan import item_meta
            from loupe.jobs.build.scan_stage import partial_name
            from loupe.storage.build_state import write_partial_arrays

            spec = item.spec
            time.sleep((spec.stop - spec.start) * self.SCAN_S_PER_IMAGE)
            with self.writer.item(item.key, item_meta(item)) as out:
                for index, layer in enumerate(spec.layers):
                    partial = synthetic_partial(self.config.id, layer, self.WIDTHS[self.config.id][layer], spec)
                    write_partial_arrays(out, partial_name(index), partial.state())
            return {"images": spec.stop - spec.start, "skipped": 0}

    return SimulatedRunner


def synthetic_partial(model: str, layer: str, units: int, spec):
    """A one-layer ScanResult of real size for a shard: the real accumulator fed random reductions of
    a few of the shard's images (the size of a partial does not depend on how many images made it)."""
    import numpy as np
    import torch

    from loupe.pipeline.scan.accumulate import UnitAccumulator, reduce_activation
    from loupe.pipeline.scan.result import Examples, LayerResult, ScanResult

    rng = np.random.default_rng(spec.shard_index)
    count = min(2 * spec.k + 2, spec.stop - spec.start)
    positions = np.sort(rng.choice(np.arange(spec.start, spec.stop), size=count, replace=False))
    accumulator = UnitAccumulator(units, spec.k, torch.device("cpu"))
    values = torch.from_numpy(rng.standard_normal((count, units, 4)).astype(np.float32))
    accumulator.add(reduce_activation(values), torch.from_numpy(positions), torch.from_numpy(positions))
    totals = accumulator.finish()
    parts = {}
    for kind, arrays in (("top", totals.top.result()), ("bottom", totals.bottom.result())):
        keys, image, where = arrays
        parts[kind] = Examples(keys, image, where, np.zeros((*keys.shape, 4), np.int32))
    result = LayerResult(layer=layer, layout="NCHW", channels=units, spatial=(2, 2), top=parts["top"],
                         bottom=parts["bottom"], images=totals.images, nonfinite=totals.nonfinite, sums=totals.sums,
                         max_positive=totals.max_positive, sketch=totals.sketch)
    return ScanResult(model=model, weights_digest="simulated", listing=spec.listing, input_size=224, k=spec.k,
                      ranges=((spec.start, spec.stop),), scanned=spec.stop - spec.start, skipped=(),
                      image_ids={int(p): f"n{int(p):08d}.JPEG" for p in positions}, layers={layer: result})


# ---- one scale, in its own driver process ----------------------------------------------------------
def config_for(fraction: float, endpoint: str, actors: int) -> tuple[dict, dict]:
    """The build config at `fraction` of the images, units and shards, and each model's layer widths."""
    from loupe.pipeline.models import load_model

    options = {"key": "testing", "secret": "testing",
               "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    images = max(1, int(IMAGES * fraction))
    models, widths = [], {}
    for model_id, source, layers in (("googlenet", "torchvision:googlenet", GOOGLENET_LAYERS),
                                     ("resnet50", "torchvision:resnet50", RESNET_LAYERS)):
        catalog = load_model(source, "none").catalog
        widths[model_id] = {name: catalog[name].channels for name in layers}
        models.append({"id": model_id, "source": source, "weights": "none", "layers": [
            {"name": name, "units": f"0-{max(1, math.ceil(catalog[name].channels * fraction)) - 1}"}
            for name in layers]})
    config = {
        "atlas": {"url": f"s3://scale/atlas-{fraction:g}", "storage_options": options},
        "models": models,
        "render": {kind: {"enabled": True, "size": 128, "steps": 512, "units_per_item": 32,
                          **({"images_per_unit": 4, "units_per_item": 8} if kind == "diversity" else {})}
                   for kind in ("channel", "neuron", "negative", "diversity")},
        "scan": {"dataset": {"url": "s3://scale/imagenet-train"}, "k": 16,
                 "shards": max(1, images // IMAGES_PER_SHARD), "pooled_activations": False,
                 "examples": {"enabled": False}},
        "resources": {"cpus_per_actor": 0.01, "max_actors": actors, "max_in_flight_per_actor": 2, "max_retries": 1},
    }
    return config, widths


def synthesized_listing(count: int):
    """`count` ImageNet-like ids and keys, built in memory like a real listing (no files)."""
    import pyarrow as pa

    from loupe.pipeline.data import Listing

    ids = pa.array([f"train/n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG" for i in range(count)])
    return Listing.build("folder", "s3://scale/imagenet-train", ids, {"path": ids})


def run_scale(fraction: float, plan_file: str, endpoint: str, actors: int, render_ms: float, scan_us: float,
              metrics: str) -> dict:
    """One build at `fraction` of full scale (this process is its driver); returns its figures. The
    config and layer widths come from `plan_file`, written by the parent, so this driver loads the
    models only as a real build's driver does."""
    import ray

    from loupe.jobs.build import execute, run as build_run, scan_plan
    from loupe.jobs.build.config import parse_config
    from loupe.storage import AtlasWriter

    os.environ.update(CREDENTIALS)
    config_dict, widths = json.loads(Path(plan_file).read_text())
    started = time.perf_counter()
    listing = synthesized_listing(max(1, int(IMAGES * fraction)))
    synthesized = time.perf_counter() - started
    runner = simulated_runner_class()
    runner.WIDTHS, runner.RENDER_S_PER_UNIT, runner.SCAN_S_PER_IMAGE = widths, render_ms / 1e3, scan_us / 1e6
    runner.METRICS = metrics
    execute.ItemRunner = runner  # the actors' class: the only compute that is simulated
    scan_plan.list_dataset = lambda scan: listing  # the synthesized listing instead of a storage listing

    phases: dict[str, float] = {}
    requests: dict[str, int] = {}
    items: dict[str, int] = {}
    compute = [0.0]  # simulated compute seconds of every item, summed

    cpu: dict[str, float] = {}

    def cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def timed(name, function):
        def wrapper(*args, **kwargs):
            before, begun, used = request_count(endpoint), time.perf_counter(), cpu_seconds()
            try:
                return function(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - begun
                cpu[name] = cpu.get(name, 0.0) + cpu_seconds() - used
                requests[name] = requests.get(name, 0) + request_count(endpoint) - before
        return wrapper

    original_plan = build_run.make_plan

    def plan(*args, **kwargs):
        result = original_plan(*args, **kwargs)
        items.update({model: len(found) for model, found in result.items.items()})
        compute[0] = sum(item.cost * (runner.RENDER_S_PER_UNIT if item.stage == "render" else runner.SCAN_S_PER_IMAGE)
                         for found in result.items.values() for item in found if item.stage in ("render", "scan"))
        return result

    build_run.make_plan = timed("plan", plan)
    execute.run_on_ray = timed("execute", execute.run_on_ray)
    AtlasWriter.publish = timed("publish", AtlasWriter.publish)
    build_run.read_state = timed("read state", build_run.read_state)
    build_run._open_writer = timed("open draft", build_run._open_writer)
    build_run._declare_arrays = timed("declare arrays", build_run._declare_arrays)
    build_run._reuse = timed("reuse (incl. declare)", build_run._reuse)
    build_run._preparation = timed("fields check", build_run._preparation)
    execute.connect_ray(None, num_cpus=max(2, os.cpu_count() or 2))
    try:
        summary = build_run.run_build(parse_config(config_dict), executor="ray", progress=False, log=lambda _: None)
    finally:
        ray.shutdown()
    if not summary.published:
        raise SystemExit(f"the simulated build did not publish: {summary.failed[:3]}")
    total_items = sum(items.values())
    return {
        "fraction": fraction, "images": len(listing), "items": total_items, "listing_s": synthesized,
        "plan_s": phases.get("plan", 0.0), "execute_s": phases.get("execute", 0.0),
        "publish_s": phases.get("publish", 0.0), "requests": requests, "total_s": summary.seconds,
        "phases": phases, "driver_cpu": cpu,
        "driver_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "compute_s": compute[0], "actors": actors,
    }


# ---- the report ------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fractions", default="0.0625,0.25,1", help="scales to run (fractions of ImageNet)")
    parser.add_argument("--actors", type=int, default=16, help="simulated workers (lightweight Ray actors)")
    parser.add_argument("--render-ms", type=float, default=2.0, help="simulated render time per unit (ms)")
    parser.add_argument("--scan-us", type=float, default=2.0, help="simulated scan time per image (us)")
    parser.add_argument("--one", type=float, default=None, help=argparse.SUPPRESS)  # run one scale (child mode)
    parser.add_argument("--endpoint", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--metrics", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--plan-file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        figures = run_scale(args.one, args.plan_file, args.endpoint, args.actors, args.render_ms, args.scan_us,
                            args.metrics)
        print("FIGURES " + json.dumps(figures))
        return
    import boto3

    os.environ.update(CREDENTIALS)
    endpoint, counts, server = serve_s3()
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="scale")
    print(f"SIMULATION: real planner, Ray executor ({args.actors} actors), storage on moto S3 at {endpoint}, "
          f"reduce and publish; compute replaced by sleeps ({args.render_ms} ms per rendered unit, {args.scan_us} us "
          f"per scanned image); no pooled activations or example pictures")
    rows = []
    for fraction in (float(f) for f in args.fractions.split(",")):
        metrics = f"/tmp/loupe-scale-{os.getpid()}-{fraction:g}.jsonl"
        plan_file = f"/tmp/loupe-scale-{os.getpid()}-{fraction:g}.json"
        Path(plan_file).write_text(json.dumps(config_for(fraction, endpoint, args.actors)))
        child = subprocess.run([sys.executable, __file__, "--one", str(fraction), "--endpoint", endpoint,
                                "--plan-file", plan_file,
                                "--actors", str(args.actors), "--render-ms", str(args.render_ms),
                                "--scan-us", str(args.scan_us), "--metrics", metrics],
                               capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        line = next((l for l in child.stdout.splitlines() if l.startswith("FIGURES ")), None)
        if child.returncode != 0 or line is None:
            print(child.stdout[-3000:], child.stderr[-6000:])
            raise SystemExit(f"scale {fraction} failed")
        figures = json.loads(line[len("FIGURES "):])
        reduces = [json.loads(l) for l in Path(metrics).read_text().splitlines() if '"reduce"' in l]
        Path(metrics).unlink()
        Path(plan_file).unlink()
        figures["reduce_peak_mb"] = max(r["peak_bytes"] for r in reduces if not r["images_table"]) / 2**20
        figures["images_reduce_peak_mb"] = max((r["peak_bytes"] for r in reduces if r["images_table"]),
                                               default=0) / 2**20
        figures["reduce_max_s"] = max(r["seconds"] for r in reduces)
        rows.append(figures)
        report(figures, args)
    server.shutdown()


def report(f: dict, args) -> None:
    items, execute = f["items"], f["execute_s"]
    requests = f["requests"]
    print(f"\nscale {f['fraction']:g}: {f['images']:,} images, {items:,} items")
    print(f"  plan            {f['plan_s']:8.1f} s  ({requests.get('plan', 0):,} requests; listing synthesized in "
          f"{f['listing_s']:.1f} s)")
    overhead = (execute - f["compute_s"] / f["actors"]) / items
    print(f"  execute         {execute:8.1f} s  = {items / execute:7.1f} items/s sustained; "
          f"{requests.get('execute', 0) / items:.1f} storage requests per item; overhead "
          f"{overhead * 1e3:.1f} ms per item beyond the simulated compute ({f['compute_s']:.1f} s over "
          f"{f['actors']} actors)")
    driver = f["driver_cpu"].get("execute", 0.0) / items
    print(f"  driver          {driver * 1e3:8.1f} ms of driver CPU per item while executing: it could schedule "
          f"{1 / max(driver, 1e-9):,.0f} items/s (the sustained rate above is bound by the actors and the S3 server "
          f"sharing {os.cpu_count()} cores)")
    print(f"  publish         {f['publish_s']:8.1f} s  ({requests.get('publish', 0):,} requests)")
    for name in ("read state", "open draft", "reuse (incl. declare)", "declare arrays", "fields check"):
        print(f"  {name:22s}{f['phases'].get(name, 0.0):8.1f} s  ({requests.get(name, 0):,} requests)")
    print(f"  whole build     {f['total_s']:8.1f} s; driver peak memory {f['driver_peak_mb']:,.0f} MB")
    print(f"  reduce          peak {f['reduce_peak_mb']:,.1f} MB of Python/numpy allocations (the reduce that "
          f"also writes the images table: {f['images_reduce_peak_mb']:,.1f} MB), longest {f['reduce_max_s']:.1f} s")


if __name__ == "__main__":
    main()
