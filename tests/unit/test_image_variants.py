"""Language runtime variants (python, node, go) without an engine: the configuration key,
the images the program declares for it under mocks, how tags follow the build inputs, the
pinned versions' one home, and the publish workflow's variant job."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from dockyard.config import ConfigError, parse
from dockyard.image import LAYERED_VARIANTS, declared_args, pinned_versions
from dockyard.sessions.request import plan
from tests.support.program import REPO, ProgramRun, RecordingMocks, Registered, record, run_program

IMAGE = "docker:index/image:Image"
REMOTE = "docker:index/remoteImage:RemoteImage"


def builds(run: ProgramRun) -> dict[str, Registered]:
    """The image builds of a run by repository (dockyard-core, dockyard-python, ...)."""
    found = {r.inputs["imageName"].split(":")[0]: r for r in run.of_type(IMAGE)}
    assert len(found) == len(run.of_type(IMAGE)), "two builds of one repository"
    return found


def container_image(run: ProgramRun, session: str) -> Any:
    return run.named(f"env-{session}-container").inputs["image"]


# --- Configuration ----------------------------------------------------------------------


def test_variant_resolves_environment_then_profile_then_core() -> None:
    cfg = parse(
        {
            "dockyard:profiles": {"py": {"variant": "python"}},
            "dockyard:environments": [
                {"sessionId": "plain"},
                {"sessionId": "by-profile", "profile": "py"},
                {"sessionId": "own", "profile": "py", "variant": "go"},
                {"sessionId": "back-to-core", "profile": "py", "variant": "core"},
            ],
        },
        stack="dev",
        cwd="/srv/app",
    )
    assert [cfg.variant_of(env) for env in cfg.environments] == ["core", "python", "go", "core"]


def test_unknown_variant_names_key_value_and_allowed() -> None:
    with pytest.raises(ConfigError) as info:
        parse(
            {
                "dockyard:profiles": {"jvm": {"variant": "java"}},
                "dockyard:environments": [{"sessionId": "a", "variant": "ruby"}],
            },
            stack="dev",
            cwd="/srv/app",
        )
    allowed = "(allowed: one of 'core', 'python', 'node' or 'go')"
    assert sorted(info.value.problems) == [
        f"dockyard:environments[0].variant: 'ruby' is not allowed {allowed}",
        f"dockyard:profiles.jvm.variant: 'java' is not allowed {allowed}",
    ]


def test_a_session_request_selects_a_variant() -> None:
    request = {"sessionId": "s1", "cwd": "/srv/app", "variant": "node"}
    result = plan(request, {})
    assert result.config.variant_of(result.environment) == "node"
    with pytest.raises(ConfigError) as info:
        plan({**request, "variant": "deno"}, {})
    assert info.value.problems == [
        "request.variant: 'deno' is not allowed (allowed: one of 'core', 'python', 'node' or 'go')"
    ]


# --- Images the program declares ------------------------------------------------------------


@pytest.mark.parametrize("variant", LAYERED_VARIANTS)
def test_a_variant_is_built_from_the_core_build(variant: str) -> None:
    run = record({"environments": [{"sessionId": "a", "variant": variant}]})
    found = builds(run)
    assert set(found) == {"dockyard-core", f"dockyard-{variant}"}
    core, layered = found["dockyard-core"], found[f"dockyard-{variant}"]
    build = layered.inputs["build"]
    assert build["args"]["BASE_IMAGE"] == core.inputs["imageName"]
    assert build["context"] == str(REPO / "images" / variant)
    assert build["dockerfile"] == str(REPO / "images" / variant / "Dockerfile")
    assert build["builderVersion"] == "BuilderV1"
    assert layered.inputs["skipPush"] is True
    assert layered.inputs["imageName"].startswith(f"dockyard-{variant}:dev-")
    # The base is registered first: the variant's build waits for it (depends_on).
    assert run.resources.index(core) < run.resources.index(layered)
    # The variant's build gets the args its Dockerfile declares, pinned ones included.
    context = REPO / "images" / variant
    pinned = pinned_versions()
    assert build["args"] == declared_args(
        context,
        {**pinned, "OS_IMAGE": pinned["BASE_IMAGE"], "BASE_IMAGE": core.inputs["imageName"]},
    )
    # What runs, and what the manifest names, is the variant.
    assert container_image(run, "a") == layered.inputs["imageName"]
    assert run.exports()["a"]["image"] == layered.inputs["imageName"]
    assert any(u.endswith(f"dockyard:index:AgentImage::image-core-{variant}") for u in run.urns)


def test_environments_share_the_core_build_and_each_variant_build() -> None:
    run = record(
        {
            "profiles": {"py": {"variant": "python"}},
            "environments": [
                {"sessionId": "c"},
                {"sessionId": "p1", "variant": "python"},
                {"sessionId": "p2", "profile": "py"},
                {"sessionId": "n", "variant": "node"},
            ],
        }
    )
    found = builds(run)
    assert sorted(found) == ["dockyard-core", "dockyard-node", "dockyard-python"]
    assert container_image(run, "c") == found["dockyard-core"].inputs["imageName"]
    assert container_image(run, "p1") == container_image(run, "p2")
    assert container_image(run, "p1") == found["dockyard-python"].inputs["imageName"]
    assert container_image(run, "n") == found["dockyard-node"].inputs["imageName"]


def _tags(args: dict[str, str]) -> dict[str, str]:
    run = record(
        {
            "image": {"args": args},
            "environments": [{"sessionId": v, "variant": v} for v in ("core", *LAYERED_VARIANTS)],
        }
    )
    return {repo: r.inputs["imageName"] for repo, r in builds(run).items()}


def test_bumping_a_toolchain_retags_only_its_variant() -> None:
    before = _tags({})
    for name, variant in (
        ("GO_VERSION", "go"),
        ("BUN_VERSION", "node"),
        ("UV_VERSION", "python"),
    ):
        after = _tags({name: "0.0.1"})
        changed = sorted(repo for repo in before if before[repo] != after[repo])
        assert changed == [f"dockyard-{variant}"], name
    # A new core is a new base: every variant follows it.
    after = _tags({"CODEX_VERSION": "0.166.0"})
    assert all(before[repo] != after[repo] for repo in before)


def test_gpu_profile_layers_the_variant_on_the_gpu_build() -> None:
    run = record({"profile": "gpu", "environments": [{"sessionId": "g", "variant": "python"}]})
    found = builds(run)
    assert sorted(found) == ["dockyard-gpu", "dockyard-gpu-python"]
    base = found["dockyard-gpu"].inputs
    assert found["dockyard-gpu-python"].inputs["build"]["args"]["BASE_IMAGE"] == base["imageName"]
    assert base["build"]["args"]["BASE_IMAGE"].startswith("nvidia/cuda:")
    # CPython compiles on the OS the GPU image is built on.
    layered = found["dockyard-gpu-python"].inputs["build"]["args"]
    assert layered["OS_IMAGE"] == base["build"]["args"]["BASE_IMAGE"]


def test_a_published_core_is_the_base_of_a_variant() -> None:
    ref = "ghcr.io/acme/dockyard-core:1.2"
    run = record({"image": {"ref": ref}, "environments": [{"sessionId": "a", "variant": "go"}]})
    assert [r.inputs["name"] for r in run.of_type(REMOTE)] == [ref]
    found = builds(run)
    assert list(found) == ["dockyard-go"]
    assert found["dockyard-go"].inputs["build"]["args"]["BASE_IMAGE"] == ref
    assert run.exports()["a"]["image"] == found["dockyard-go"].inputs["imageName"]


# --- Pinned versions ------------------------------------------------------------------------


def _arg_defaults(dockerfile: Path) -> dict[str, set[str]]:
    declared: dict[str, set[str]] = {}
    for match in re.finditer(r"^ARG ([A-Z][A-Z0-9_]*)=(\S+)$", dockerfile.read_text(), re.M):
        declared.setdefault(match.group(1), set()).add(match.group(2))
    return declared


@pytest.mark.parametrize("variant", LAYERED_VARIANTS)
def test_variant_dockerfile_pins_equal_the_versions_file(variant: str) -> None:
    """Each variant's toolchain versions live in images/versions.env; its Dockerfile's
    defaults (for a plain `docker build`) are copies that must not drift."""
    dockerfile = REPO / "images" / variant / "Dockerfile"
    declared = _arg_defaults(dockerfile)
    pinned = pinned_versions()
    versions = {name for name in declared if name.endswith("_VERSION")}
    assert versions, f"{dockerfile} pins no version"
    assert versions <= set(pinned), f"not in images/versions.env: {versions - set(pinned)}"
    assert {name: values for name, values in declared.items() if name in pinned} == {
        name: {pinned[name]} for name in declared if name in pinned
    }
    # The base is always named by the build: no default that could pick a stale image.
    assert re.search(r"^ARG BASE_IMAGE$", dockerfile.read_text(), re.M)
    # A compile stage's OS is the one the core image is built on.
    assert declared.get("OS_IMAGE", {pinned["BASE_IMAGE"]}) == {pinned["BASE_IMAGE"]}


def test_every_pinned_version_is_used_by_some_image() -> None:
    dockerfiles = sorted((REPO / "images").glob("*/Dockerfile"))
    used = set().union(*(_arg_defaults(path) for path in dockerfiles))
    assert set(pinned_versions()) <= used


# --- Publish workflow -----------------------------------------------------------------------


def test_workflow_builds_and_pushes_each_variant_on_its_core() -> None:
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "core-image.yml").read_text())
    job = workflow["jobs"]["variants"]
    assert job["strategy"]["matrix"] == {"variant": list(LAYERED_VARIANTS)}
    steps = {step.get("name"): step for step in job["steps"]}
    core = steps["Build the core image to build on"]["with"]
    assert core["context"] == "images/core"
    assert core["load"] is True
    assert core["push"] is False
    variant = steps["Build and push"]["with"]
    assert variant["context"] == "images/${{ matrix.variant }}"
    assert "BASE_IMAGE=dockyard-core:base" in variant["build-args"]
    meta = steps["Image tags and labels"]["with"]
    assert meta["images"] == "ghcr.io/${{ github.repository_owner }}/dockyard-${{ matrix.variant }}"


def test_kubernetes_refuses_a_variant_it_cannot_build() -> None:
    run = ProgramRun()
    with pytest.raises(pulumi.RunError) as info:
        run_program(
            RecordingMocks(run),
            {
                "backend": "kubernetes",
                "image": {"ref": "ghcr.io/acme/dockyard-core:1.2"},
                "environments": [
                    {"sessionId": "a", "variant": "go"},
                    {"sessionId": "b", "variant": "go", "image": "ghcr.io/acme/dockyard-go:1.2"},
                ],
            },
            recorder=run,
        )
    message = str(info.value)
    assert "dockyard:environments[0].variant: 'go' is not allowed (allowed: core on backend " in (
        message
    )
    assert "environments[1]" not in message
    assert run.resources == []
