"""The cron parser the schedule tests rely on rejects what the cluster would reject."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.deploy.cron import cron_fields, shortest_gap


def test_cron_parser_rejects_bad_schedules() -> None:
    for bad in ("0 3 * *", "60 3 * * *", "0 24 * * *", "0 3 0 * *", "0 3 * 13 *", "0 3 * * 8"):
        with pytest.raises(AssertionError):
            cron_fields(bad)
    assert shortest_gap("0 3 * * *") == timedelta(days=1)
    assert shortest_gap("*/15 * * * *") == timedelta(minutes=15)
    assert shortest_gap("0 3 * * 1,4") == timedelta(days=3)
