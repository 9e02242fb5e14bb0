"""deploy/Dockerfile: what it copies exists and gets past the ignore file, the code exists once
(the installed copy), and every manifest runs this one image at the project's version."""

from __future__ import annotations

import importlib
import re
import shlex
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tests.deploy.manifests import (
    DOCKERIGNORE, REPO, dockerfile_args, dockerfile_copies, dockerfile_instructions,
)


def test_dockerfile_builds_on_a_ray_gpu_image_matching_the_project() -> None:
    instructions = dockerfile_instructions()
    (base,) = [rest for word, rest in instructions if word == "FROM"]
    image = dockerfile_args().get(base.strip("${}"), base)
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(gpu|cu\d+)", image)
    assert match, f"base image {image!r} is not a CUDA rayproject/ray image"
    installed = importlib.import_module("ray").__version__
    assert match.group(1).split(".")[:2] == installed.split(".")[:2], f"image Ray {match.group(1)} vs installed {installed}"
    assert f"{match.group(2)}.{match.group(3)}" == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_dockerfile_copies_what_pip_install_needs_before_installing(pyproject: dict[str, Any]) -> None:
    copied_before_install: set[str] = set()
    installed = False
    for word, rest in dockerfile_instructions():
        if word == "COPY" and not installed:
            sources = [p for p in shlex.split(rest) if not p.startswith("--")][:-1]
            copied_before_install.update(Path(s).parts[0] for s in sources)
        if word == "RUN" and re.search(r"\bpip install (\S+)", rest):
            installed = True
    assert installed, "the Dockerfile never runs `pip install`"
    packages = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    assert {"pyproject.toml", pyproject["project"]["readme"], *packages} <= copied_before_install


def second_copies_of_the_code(instructions: list[tuple[str, str]], code: set[str]) -> list[str]:
    """Why an image would hold the code twice (or not install it): empty when the sources go to a
    staging folder that the install step installs and deletes, and the working directory receives
    only configs/, so `import loupe` there can only find site-packages."""
    problems: list[str] = []
    workdir, staged, into_workdir = PurePosixPath("/"), [], set()
    install: tuple[str, str] | None = None
    for word, rest in instructions:
        if word == "WORKDIR":
            workdir = workdir / rest
        elif word == "COPY":
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            sources, dest = parts[:-1], workdir / parts[-1]
            if dest == workdir or workdir in dest.parents:
                into_workdir.update(Path(s).parts[0] for s in sources)
            if code & {Path(s).parts[0] for s in sources}:
                if install is not None:
                    problems.append(f"COPY {rest} comes after the install: that code is never installed")
                staged.append(dest)
        elif word == "RUN" and (match := re.search(r"\bpip install (\S+)", rest)):
            install = (match.group(1), rest)
    if install is None:
        return problems + ["the Dockerfile never runs `pip install`"]
    target, run = PurePosixPath(install[0]), install[1]
    if not staged or not all(d == target or target in d.parents for d in staged):
        problems.append(f"pip installs {target}, but the code was copied to {[str(d) for d in staged]}")
    if not re.search(rf"&&\s*rm -rf {re.escape(str(target))}(\s|$)", run):
        problems.append(f"the staged sources in {target} are not deleted after installing")
    if into_workdir != {"configs"}:
        problems.append(f"the working directory {workdir} receives {sorted(into_workdir)}, not only configs")
    return problems


def test_the_image_holds_one_copy_of_the_code_the_installed_one(pyproject: dict[str, Any]) -> None:
    code = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    assert second_copies_of_the_code(dockerfile_instructions(), code) == []


def test_an_image_that_keeps_its_sources_in_the_workdir_is_caught() -> None:
    old_style = """FROM rayproject/ray:2.60.0-py311-gpu
WORKDIR /home/ray/loupe
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY storage ./storage
COPY configs ./configs
RUN pip install .
"""
    problems = second_copies_of_the_code(dockerfile_instructions(old_style), {"pipeline", "storage"})
    assert any("not deleted" in p for p in problems)
    assert any("receives ['README.md', 'configs', 'pipeline', 'pyproject.toml', 'storage']" in p for p in problems)


def test_every_copied_path_exists_and_passes_the_dockerignore() -> None:
    rules = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    rules = [r for r in rules if r and not r.startswith("#")]
    for sources, _ in dockerfile_copies():
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
            assert not dockerignored(source, rules), f"COPY {source} is excluded by Dockerfile.dockerignore"
    for heavy in (".venv", ".git", "tests", "benchmarks", "atlas", "build", "loupe.egg-info", "loupe_atlas.egg-info",
                  "loupe/__pycache__"):
        assert dockerignored(heavy, rules), f"{heavy} would be sent to the Docker daemon"


def dockerignored(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for rule in rules:
        pattern = dockerignore_regex(rule.removeprefix("!").rstrip("/"))
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            ignored = not rule.startswith("!")
    return ignored


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: `**/` spans folders, `*` and `?` stay within one path segment."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def test_dockerfile_runs_unprivileged_and_holds_no_secrets() -> None:
    instructions = dockerfile_instructions()
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    for word, rest in instructions:
        if word in ("ENV", "ARG"):
            assert not re.search(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY)", rest, re.I), f"{word} {rest} looks like a credential"


def test_dockerfile_cmd_is_an_installed_console_script(pyproject: dict[str, Any]) -> None:
    (cmd,) = [rest for word, rest in dockerfile_instructions() if word == "CMD"]
    argv = yaml.safe_load(cmd)
    target = pyproject["project"]["scripts"][argv[0]]
    module, _, attribute = target.partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))


def test_weights_the_image_can_preload_resolve_offline(entrypoint_configs: list[str]) -> None:
    """The optional preload step calls get_model_weights(<builder>).DEFAULT.get_state_dict."""
    import torchvision

    from loupe.jobs.build.config import load_config

    run = " ".join(rest for word, rest in dockerfile_instructions() if word == "RUN")
    assert "get_model_weights(sys.argv[1]).DEFAULT.get_state_dict" in run
    for config in entrypoint_configs:
        for model in load_config(REPO / config).models:
            if model.source.startswith("torchvision:") and model.weights == "DEFAULT":
                weights = torchvision.models.get_model_weights(model.source.split(":", 1)[1]).DEFAULT
                assert callable(weights.get_state_dict) and weights.url.startswith("https://")


# ----------------------------------------------------------------------------------------------
# One image and one Ray version everywhere.


def test_every_manifest_runs_the_same_loupe_image(
    rayjob: dict[str, Any], raycronjob: dict[str, Any], scheduled_rayjob: dict[str, Any], ray_up: dict[str, Any], pyproject: dict[str, Any]
) -> None:
    images = {ray_up["docker"]["image"]}
    for spec in (rayjob["spec"], raycronjob["spec"]["jobTemplate"], scheduled_rayjob["spec"]):
        cluster = spec["rayClusterSpec"]
        for template in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
            images.update(c["image"] for c in template["spec"]["containers"])
    assert len(images) == 1, f"different images: {sorted(images)}"
    (image,) = images
    assert image.rsplit(":", 1)[1] == pyproject["project"]["version"], "tag the image with the project version"


def test_rayversion_matches_the_image(rayjob: dict[str, Any]) -> None:
    image_version = dockerfile_args()["RAY_IMAGE"].split(":")[1].split("-")[0]
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == image_version
