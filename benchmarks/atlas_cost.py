"""Objects and bytes of a built atlas, per unit, image and item, and projected to a full-size atlas.

Reads one published version (every object under it, listed once) and sorts its objects into
families: renders (per rendered image), example pictures and heat maps (per unit and slot),
pooled activations (per image and unit), tables, scan partials, completion records and the rest.
Each family's bytes are divided by what they scale with, measured in the same atlas, and
multiplied by the target's count: by default a whole InceptionV1 atlas (the 12 Lucid layers,
5,808 units) over ImageNet's 1,281,167 training images, with the measured atlas's settings
(render and example sizes are scaled by pixel count when `--render-size`/`--example-size` differ).

This is the storage half of the cost model in docs/performance.md (the compute half is
`benchmarks/gpu.py`). Object counts follow the measured atlas's sharding (units per item,
images per chunk); bytes depend on image content, so a random-weight or synthetic-data atlas is
only a rough guide for pictures.

    python benchmarks/atlas_cost.py atlas/quickstart
    python benchmarks/atlas_cost.py s3://bucket/atlases/googlenet --units 5808 --images 1281167
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loupe.storage import layout, open_atlas  # noqa: E402

#: The target of the projection, by default: InceptionV1's Lucid layers and ImageNet's training set.
INCEPTION_V1_UNITS = 5808
IMAGENET_IMAGES = 1_281_167


@dataclass
class Family:
    """One kind of object: how many there are, their bytes, and the count they scale with."""

    name: str
    scales_with: str  # "rendered images", "example slots", "image x unit", ...
    objects: int = 0
    bytes: int = 0
    measure: float = 0.0  # the measured atlas's count of `scales_with`
    target: float = 0.0  # the projection's count of `scales_with`
    area_ratio: float = 1.0  # target pixels / measured pixels (pictures only)
    projected_objects: float = 0.0  # from the target's sharding (objects do not scale with bytes)

    def projected_bytes(self) -> float:
        return self.bytes / self.measure * self.target * self.area_ratio if self.measure else 0.0


@dataclass(frozen=True)
class Target:
    """The atlas to project to: its size and how it is sharded (the build config's defaults)."""

    units: int = INCEPTION_V1_UNITS
    images: int = IMAGENET_IMAGES
    layers: int = 12
    shards: int = 64  # scan.shards
    units_per_item: int = 32  # render.<kind>.units_per_item
    example_units_per_item: int = 64  # scan.examples.units_per_item
    render_size: int | None = None
    example_size: int | None = None


def _ranges_count(ranges) -> int:
    return sum(stop - start for start, stop in ranges)


def measure(url: str, target: Target, storage_options: dict | None = None) -> tuple[dict[str, Family], dict]:
    """The families of the atlas at `url`, with their projection to `target`."""
    atlas = open_atlas(url, storage_options=storage_options)
    manifest = atlas.manifest
    files = atlas.store.list_files(layout.version_dir(atlas.version))
    prefix = layout.version_dir(atlas.version) + "/"
    counts = manifest["counts"]
    scanned_units = rendered_images = rendered_units = example_slots = 0
    render_pixels, example_pixels, kinds = [], [], set()
    for layers in manifest["layers"].values():
        for entry in layers.values():
            width = _ranges_count(entry.get("units", []))
            if entry.get("activations"):
                scanned_units += width
            renders = entry.get("renders", {})
            rendered_units += max((_ranges_count(r["units"]) for r in renders.values()), default=0)
            kinds.update(renders)
            for render in renders.values():
                shape = render["shape"]
                per_unit = shape[1] if len(shape) == 5 else 1
                rendered_images += _ranges_count(render["units"]) * per_unit
                render_pixels.append(shape[-3] * shape[-2])
            for example in entry.get("examples", {}).values():
                example_slots += _ranges_count(example["units"]) * example["shape"][1]
                example_pixels.append(example["shape"][2] * example["shape"][3])
    atlas_units = counts["units"]
    atlas_images = counts["images"]
    images_per_unit = rendered_images / max(rendered_units, 1)
    slots_per_unit = example_slots / max(scanned_units, 1)
    render_ratio = (target.render_size ** 2 / max(render_pixels)) if target.render_size and render_pixels else 1.0
    example_ratio = (target.example_size ** 2 / max(example_pixels)) if target.example_size and example_pixels else 1.0
    shards = len({rel.split("/")[3] for rel in files if rel.startswith(prefix + "partials/")})
    units, layers = target.units, target.layers
    render_items = len(kinds) * -(-units // target.units_per_item)
    example_shards = 3 * -(-units // target.example_units_per_item)  # top, bottom, samples
    families = {
        "renders": Family("renders (pictures + objective)", "rendered image", measure=rendered_images,
                          target=units * images_per_unit, area_ratio=render_ratio,
                          projected_objects=2 * render_items + 2 * len(kinds) * layers),
        "examples": Family("example pictures + heat maps", "example slot", measure=example_slots,
                           target=units * slots_per_unit, area_ratio=example_ratio,
                           projected_objects=2 * example_shards + 6 * layers),
        "activations": Family("pooled activations (max, mean)", "image x unit", measure=atlas_images * scanned_units,
                              target=target.images * units, projected_objects=2 * layers * (target.shards + 1)),
        "unit tables": Family("unit tables (units, examples, samples, histograms)", "unit",
                              measure=scanned_units or atlas_units, target=units,
                              projected_objects=4 * layers + 2 * -(-units // target.units_per_item)),
        "images table": Family("images table", "image", measure=atlas_images, target=target.images,
                               projected_objects=1),
        "partials": Family("scan partials (reduce inputs)", "unit x shard", measure=scanned_units * max(shards, 1),
                           target=units * target.shards, projected_objects=layers * target.shards),
        "records": Family("completion records", "item", measure=counts["items"],
                          target=render_items + 2 * target.shards + 2 * layers,
                          projected_objects=render_items + 2 * target.shards + 2 * layers),
        "other": Family("manifest, checksums, version files", "version", measure=1, target=1, projected_objects=4),
    }
    for path, size in files.items():
        rel = path[len(prefix):]
        top = rel.split("/", 1)[0]
        if top == "renders":
            family = families["renders"]
        elif top == "examples":
            family = families["examples"]
        elif top == "activations":
            family = families["activations"]
        elif top == "tables":
            family = families["images table" if rel.startswith("tables/images/") else "unit tables"]
        elif top == "partials":
            family = families["partials"]
        elif top == "items":
            family = families["records"]
        else:
            family = families["other"]
        family.objects += 1
        family.bytes += size
    setting = {"units": atlas_units, "scanned units": scanned_units, "rendered units": rendered_units,
               "images": atlas_images, "render kinds": len(kinds), "rendered images per unit": round(images_per_unit, 2),
               "example slots per unit": round(slots_per_unit, 2), "scan shards": shards, "version": atlas.version}
    return families, setting


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("atlas", help="atlas URL (a folder or s3://...)")
    parser.add_argument("--units", type=int, default=INCEPTION_V1_UNITS, help="units of the projected atlas")
    parser.add_argument("--images", type=int, default=IMAGENET_IMAGES, help="scanned images of the projected atlas")
    parser.add_argument("--render-size", type=int, default=None, help="render size of the projection (px)")
    parser.add_argument("--example-size", type=int, default=None, help="example picture size of the projection (px)")
    parser.add_argument("--layers", type=int, default=12, help="layers of the projected atlas")
    parser.add_argument("--shards", type=int, default=64, help="scan shards of the projected atlas")
    parser.add_argument("--units-per-item", type=int, default=32, help="render units per item (one shard object)")
    parser.add_argument("--storage-options", default=None, help="fsspec options as JSON")
    args = parser.parse_args()
    options = json.loads(args.storage_options) if args.storage_options else None
    target = Target(args.units, args.images, args.layers, args.shards, args.units_per_item,
                    render_size=args.render_size, example_size=args.example_size)
    families, setting = measure(args.atlas, target, options)
    print(f"measured atlas {args.atlas}: " + ", ".join(f"{k} {v}" for k, v in setting.items()))
    print(f"projection: {target.units:,} units in {target.layers} layers over {target.images:,} images, "
          f"{target.shards} scan shards, {target.units_per_item} units per render item, every unit rendered and "
          f"scanned as the measured atlas's rendered units are"
          f"{f', renders at {args.render_size} px' if args.render_size else ''}"
          f"{f', examples at {args.example_size} px' if args.example_size else ''}\n")
    print(f"{'family':>52} {'objects':>9} {'bytes':>12} {'per':>14} {'bytes/each':>12} {'projected objects':>18} "
          f"{'projected bytes':>16}")
    total_objects = total_bytes = 0.0
    for family in families.values():
        each = family.bytes / family.measure if family.measure else 0.0
        objects, size = family.projected_objects, family.projected_bytes()
        total_objects += objects
        total_bytes += size
        print(f"{family.name:>52} {family.objects:>9,} {_human(family.bytes):>12} {family.scales_with:>14} "
              f"{_human(each):>12} {objects:>18,.0f} {_human(size):>16}")
    print(f"{'total':>52} {sum(f.objects for f in families.values()):>9,} "
          f"{_human(sum(f.bytes for f in families.values())):>12} {'':>14} {'':>12} {total_objects:>18,.0f} "
          f"{_human(total_bytes):>16}")


if __name__ == "__main__":
    main()
