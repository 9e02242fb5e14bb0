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

    def count(self, stage: str, cost: int, result: dict) -> None:
        """Add one finished item: `cost` counts its units (render) or images (scan). Preparation
        items (fields) belong to no version and are not counted."""
        if stage == "fields":
            return
        if result.get("status") == "done":
            self.done += 1
        else:
            self.already_done += 1
        if stage == "render":
            self.units_rendered += cost
        elif stage == "scan":
            self.images_scanned += int(result.get("images", 0))
            self.skipped_images += int(result.get("skipped", 0))

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


#: What a work item's cost counts, by stage (reduce items cost nothing).
WORK_UNITS = {"render": "units", "scan": "images"}


class Progress:
    """A tqdm bar over items, with the rate of each kind of work it does (units rendered per
    second, images scanned per second); quiet when not attached to a terminal unless asked."""

    def __init__(self, total_items: int, desc: str, enabled: bool | None = None) -> None:
        self.done: dict[str, int] = {}
        self.started = time.perf_counter()
        self.bar = tqdm(total=total_items, desc=desc, unit="item", file=sys.stderr,
                        disable=enabled is False, dynamic_ncols=True, mininterval=0.5)

    def advance(self, stage: str, cost: int) -> None:
        """One item of `stage` finished; `cost` counts its units (render) or images (scan)."""
        unit = WORK_UNITS.get(stage)
        if unit is not None:
            self.done[unit] = self.done.get(unit, 0) + cost
        self.bar.set_postfix_str(self.rates(), refresh=False)
        self.bar.update(1)

    def rates(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return ", ".join(f"{count / elapsed:.2f} {unit}/s" for unit, count in sorted(self.done.items()))

    def close(self) -> None:
        self.bar.close()
