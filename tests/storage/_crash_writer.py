"""Run by test_publish.py in a child process: build a version, then hang right before the pointer
swap (or inside an item) so the parent can SIGKILL it there."""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from tests.storage.atlas_samples import write_small
from loupe.storage import AtlasWriter, publish


def hang(message: str) -> None:
    print(message, flush=True)
    time.sleep(600)


def main() -> None:
    url, options, where = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    writer = AtlasWriter.create(url, storage_options=options)
    print(f"VERSION {writer.version}", flush=True)
    built = write_small(writer, seed=1)
    if where == "item":
        item = writer.item("half-written")
        item.write_render_block("net", "conv1", "channel", 0, built.images[:4], np.zeros(4))
        hang("READY")
    publish.swap_pointer = lambda *args, **kwargs: hang("READY")
    writer.publish()


if __name__ == "__main__":
    main()
