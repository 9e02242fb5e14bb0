"""`loupe atlas show` and `loupe atlas prune` through their argparse wiring."""

from __future__ import annotations

import json

from tests.storage.atlas_samples import write_small
from loupe.jobs.cli import main
from loupe.storage import AtlasWriter, list_versions


def _run(argv: list[str]) -> int:
    """Through the `loupe` command's own entry point, so its error wrapper and exit codes apply."""
    return main(argv)


def _options(target) -> list[str]:
    return ["--storage-options", json.dumps(target.options)] if target.options else []


def test_show_and_prune(target, capsys):
    versions = []
    for seed in range(2):
        writer = AtlasWriter.create(target.url, code_version="9.9", storage_options=target.options)
        write_small(writer, seed=seed)
        writer.publish()
        versions.append(writer.version)
    assert _run(["atlas", "show", target.url, "--verify", *_options(target)]) == 0
    out = capsys.readouterr().out
    assert f"{versions[-1]}" in out and "current" in out and "published" in out
    assert "conv1: 10 units; renders: channel 10, diversity 10; activations: max 12x10, mean 12x10" in out
    assert "verified" in out and "code 9.9" in out

    assert _run(["atlas", "prune", target.url, "--keep", "1", *_options(target)]) == 0
    assert "deleted 1 version(s)" in capsys.readouterr().out
    assert [v.version for v in list_versions(target.url, target.options)] == versions[-1:]


def test_errors_exit_2_naming_the_url(tmp_path, capsys):
    assert _run(["atlas", "prune", str(tmp_path), "--keep", "0"]) == 2
    assert "--keep must be a positive integer" in capsys.readouterr().err
    assert _run(["atlas", "show", "nosuchproto://x/y"]) == 2
    assert "nosuchproto://x/y" in capsys.readouterr().err
    assert _run(["atlas", "show", str(tmp_path / "empty")]) == 0
    assert "no versions" in capsys.readouterr().out
