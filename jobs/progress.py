"""Honest progress on the driver: items, units per second and ETA, then a summary."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from tqdm import tqdm


@dataclass
class BuildSummary:
    """What a build did, printed at the end and returned to callers and tests."""

    planned: int = 0
    done: int = 0
    reused: int = 0
    already_done: int = 0
    failed: list[str] = field(default_factory=list)
    skipped_images: int = 0
    units_rendered: int = 0
    images_scanned: int = 0
    seconds: float = 0.0
    version: str | None = None
    published: bool = False
    unchanged: bool = False
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        state = "published" if self.published else ("unchanged" if self.unchanged else "NOT published")
        out = [
            f"build {state}: version {self.version or '-'}",
            f"  items: {self.planned} planned, {self.done} done, {self.reused} reused, "
            f"{self.already_done} already done, {len(self.failed)} failed",
            f"  work: {self.units_rendered} unit renders, {self.images_scanned} images scanned, "
            f"{self.skipped_images} images skipped",
            f"  time: {self.seconds:.1f} s",
        ]
        out += [f"  failed: {key}" for key in self.failed[:10]]
        out += [f"  note: {note}" for note in self.notes]
        return out


class Progress:
    """A tqdm bar over items with a units/s rate; quiet when not attached to a terminal unless asked."""

    def __init__(self, total_items: int, total_cost: int, desc: str, enabled: bool | None = None) -> None:
        self.total_cost = max(1, total_cost)
        self.cost_done = 0
        self.started = time.perf_counter()
        self.bar = tqdm(total=total_items, desc=desc, unit="item", file=sys.stderr,
                        disable=enabled is False, dynamic_ncols=True, mininterval=0.5)

    def advance(self, cost: int, label: str = "") -> None:
        self.cost_done += cost
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.cost_done / elapsed
        self.bar.set_postfix_str(f"{rate:.2f} units/s{(' ' + label) if label else ''}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
