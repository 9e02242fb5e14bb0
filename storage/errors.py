"""Errors raised by the atlas store; every message names the URL or object at fault."""

from __future__ import annotations


class StorageError(Exception):
    """Base class for atlas storage failures (bad URL, missing object, permission, corruption)."""

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class ChecksumError(StorageError):
    """A stored object's bytes differ from what was recorded when it was written."""


class PublishConflictError(StorageError):
    """Another build moved the atlas pointer first; this build's version was left unpublished."""


class VersionNotFoundError(StorageError):
    """The requested version does not exist or is not complete."""
