"""Glue between compute (pipeline/) and storage (storage/): the CLI and the Ray build entrypoints."""
