"""The deploy guide and the README point at files that exist and use only `loupe.*` names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.manifests import BUILD_COMMANDS, REPO

GUIDES = [REPO / "README.md", REPO / "docs" / "deploy.md", REPO / "docs" / "storage.md", REPO / "docs" / "architecture.md"]
#: The guides that show how to submit a build to a cluster.
SUBMIT_GUIDES = [REPO / "README.md", REPO / "docs" / "deploy.md"]
#: Imports and module runs through the old top-level roots, which no longer exist.
OLD_NAMES = re.compile(
    r"^\s*(?:from|import)\s+(?:pipeline|storage|jobs)\b|-m\s+(?:pipeline|storage|jobs)\.|(?<![\w.])(?:pipeline|storage|jobs)\.[a-z_]+\(",
    re.M,
)


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[\w-]*\n(.*?)^```", text, re.M | re.S)


def test_deploy_guide_names_only_existing_files() -> None:
    text = (REPO / "docs" / "deploy.md").read_text()
    paths = set(re.findall(r"(?<![\w/.-])((?:deploy|configs|docs|tests|jobs|benchmarks)/[\w./-]*\w)", text))
    assert paths, "docs/deploy.md names no repository file"
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"docs/deploy.md names missing files: {missing}"


def test_the_old_names_pattern_catches_the_old_spellings() -> None:
    for old in ("import storage", "from pipeline.models import load_model", "python -m jobs.build_atlas x.yaml",
                "atlas = storage.open_atlas('a')"):
        assert OLD_NAMES.search(old), old
    for new in ("import loupe", "from loupe.pipeline.models import load_model", "python -m loupe build x.yaml",
                "atlas = loupe.open_atlas('a')", "writes through `storage/`",
                "loupe.storage.plan_image_chunks(8, 2)"):
        assert not OLD_NAMES.search(new), new


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: str(p.relative_to(REPO)))
def test_examples_use_only_loupe_names(guide: Path) -> None:
    blocks = code_blocks(guide.read_text())
    assert blocks, f"{guide.name} has no code examples"
    stale = [match.group(0).strip() for block in blocks for match in OLD_NAMES.finditer(block)]
    assert not stale, f"{guide.relative_to(REPO)} still uses the old import roots: {stale}"


@pytest.mark.parametrize("guide", SUBMIT_GUIDES, ids=lambda p: str(p.relative_to(REPO)))
def test_ray_job_submit_examples_run_a_build_command(guide: Path) -> None:
    spellings = [" ".join(command) for command in BUILD_COMMANDS]
    commands = [c.replace("\\\n", " ") for block in code_blocks(guide.read_text()) for c in re.findall(r"ray job submit (?:.*\\\n)*.*", block)]
    assert commands, f"{guide.name} shows no `ray job submit`"
    for command in commands:
        entrypoint = " ".join(command.split(" -- ", 1)[1].split())
        assert any(entrypoint.startswith(s + " ") for s in spellings), f"{guide.name}: {command!r} runs no build command"
