"""The one place that names a version's status, so writers, housekeeping and the CLI agree."""

from __future__ import annotations

import enum


class VersionStatus(str, enum.Enum):
    """Where a version stands; the value is what manifests, version.json and `atlas show` print."""

    CURRENT = "current"  # named by the pointer
    PUBLISHED = "published"  # was current once
    COMPLETE = "complete"  # sealed (manifest written) but never published: lost a race, or publish interrupted
    BUILDING = "building"  # draft: a build is running, or was interrupted

    def __str__(self) -> str:
        return self.value
