"""Cron schedules: five fields with valid values (checked here, as the cluster would on apply)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterator

CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
CRON_NAMES = [{}, {}, {}, {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)},
              {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}]


def cron_fields(schedule: str) -> list[set[int]]:
    """Parse a standard five-field cron expression into the allowed values of each field."""
    fields = schedule.split()
    assert len(fields) == 5, f"cron schedule {schedule!r} has {len(fields)} fields, not 5"
    parsed = []
    for text, (low, high), names in zip(fields, CRON_RANGES, CRON_NAMES):
        values: set[int] = set()
        for part in text.lower().split(","):
            base, _, step_text = part.partition("/")
            step = int(step_text) if step_text else 1
            assert step >= 1, f"bad step in {schedule!r}"
            if base == "*":
                start, stop = low, high
            else:
                bounds = [names[b] if b in names else int(b) for b in base.split("-")]
                start, stop = bounds[0], bounds[-1]
                if step_text and len(bounds) == 1:
                    stop = high
            assert low <= start <= stop <= high, f"{part!r} is out of range {low}-{high} in {schedule!r}"
            values.update(range(start, stop + 1, step))
        parsed.append(values)
    parsed[4] = {d % 7 for d in parsed[4]}
    return parsed


def cron_times(schedule: str, start: datetime, minutes: int) -> Iterator[datetime]:
    minute, hour, dom, month, dow = cron_fields(schedule)
    dom_any, dow_any = schedule.split()[2] == "*", schedule.split()[4] == "*"
    for offset in range(minutes):
        t = start + timedelta(minutes=offset)
        day_dom, day_dow = t.day in dom, (t.isoweekday() % 7) in dow
        day_ok = (day_dom and day_dow) if (dom_any or dow_any) else (day_dom or day_dow)
        if t.minute in minute and t.hour in hour and t.month in month and day_ok:
            yield t


def shortest_gap(schedule: str) -> timedelta:
    times = list(cron_times(schedule, datetime(2025, 1, 1), 60 * 24 * 62))
    assert len(times) >= 2, f"{schedule!r} fires less than twice in two months"
    return min(b - a for a, b in zip(times, times[1:]))
