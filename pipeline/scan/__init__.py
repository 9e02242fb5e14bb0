"""Dataset scans: top/bottom examples, positions, crop boxes and statistics for every unit in one pass.

    listing = list_images("s3://bucket/val/", storage_options=opts).shard(64, 7, align=1024)
    result = scan_dataset(model, listing, ["features.10", "features.14"], on_chunk=sink)
    merged = merge_results(shard_results)          # any order, same result as one pass
    merged.units_table(); merged.examples_table()  # Arrow tables for storage
    ScanResult.from_state(merged.state())           # plain arrays (np.savez, no pickle) and back
"""

from loupe.pipeline.scan.chunks import POOLINGS, SPATIAL, ActivationChunk, ChunkCollector, ChunkSink
from loupe.pipeline.scan.accumulate import TopK
from loupe.pipeline.scan.bands import BandSampler, BandSamples, BandSettings, ValueHistogram, band_thresholds, image_priority
from loupe.pipeline.scan.exact_sum import ExactSum
from loupe.pipeline.scan.pictures import PictureCutter, PictureRequests, Pictures, PictureSettings, square_box
from loupe.pipeline.scan.receptive_field import ReceptiveField, fields_from_state, fields_state, probe_receptive_fields
from loupe.pipeline.scan.result import QUANTILES, Examples, LayerResult, MergeError, ScanResult, merge_results
from loupe.pipeline.scan.run import scan_dataset
from loupe.pipeline.scan.scanner import ScanError, ScanOptions, ScanProgress, Scanner
from loupe.pipeline.scan.sketch import QuantileSketch
from loupe.pipeline.scan.state import StateError

__all__ = [
    "BandSampler",
    "PictureCutter",
    "PictureRequests",
    "PictureSettings",
    "Pictures",
    "square_box",
    "BandSamples",
    "BandSettings",
    "ValueHistogram",
    "band_thresholds",
    "image_priority",
    "POOLINGS",
    "QUANTILES",
    "SPATIAL",
    "ActivationChunk",
    "ChunkCollector",
    "ChunkSink",
    "Examples",
    "ExactSum",
    "LayerResult",
    "MergeError",
    "QuantileSketch",
    "ReceptiveField",
    "ScanError",
    "ScanOptions",
    "ScanProgress",
    "ScanResult",
    "Scanner",
    "StateError",
    "TopK",
    "fields_from_state",
    "fields_state",
    "merge_results",
    "probe_receptive_fields",
    "scan_dataset",
]
