"""Errors about datasets: unreadable sources, bad listings, impossible shards."""

from __future__ import annotations

from loupe.pipeline.errors import LoupeError


class DatasetError(LoupeError):
    """A dataset source, listing or shard request is unusable; the message names the URL or field."""
