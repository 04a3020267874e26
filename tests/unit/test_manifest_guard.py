"""Manifests stay the host's (issue 25 item 5): no bind lets an environment write where
host tools read manifests and host files, and where a bind shows that directory, the
program mounts it read-only over its place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dockyard.config import ConfigError, parse
from tests.support.program import record

CONTAINER = "docker:index/container:Container"


def _stack(cwd: Path, environment: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "dockyard:image": {"ref": "dockyard-core:test"},
        "dockyard:environments": [{"sessionId": "s1", "backend": "claude", **environment}],
        **{f"dockyard:{k}": v for k, v in top.items()},
    }


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "srv" / "app"
    path.mkdir(parents=True)
    return path


@pytest.mark.parametrize(
    "case",
    [
        "workspace is the project",
        "project bound elsewhere",
        "a directory beside the manifests",
        "absolute manifest dir, its parent bound",
    ],
)
def test_binds_that_show_the_manifest_root_at_most_one_level_down_pass(
    project: Path, case: str
) -> None:
    srv = project.parent
    environment, top = {
        "workspace is the project": ({"workspaceHostPath": str(project)}, {}),
        "project bound elsewhere": ({"volumes": [f"{project}:/src"]}, {}),
        "a directory beside the manifests": ({"volumes": [f"{project}/src:/src"]}, {}),
        "absolute manifest dir, its parent bound": (
            {"volumes": [f"{srv}:/srv"]},
            {"bindRoots": [str(srv)], "manifestDir": f"{srv}/manifests"},
        ),
    }[case]
    (project / "src").mkdir()
    parse(_stack(project, environment, **top), stack="t", cwd=str(project))


@pytest.mark.parametrize(
    ("volume", "top"),
    [
        ("{project}/.companion:/m", {}),
        ("{project}/.companion/cloud:/m", {}),
        ("{project}/.companion/cloud/environments:/m", {}),
        # The project two levels below the bind: the agent could move `app` aside.
        ("{srv}:/srv", {"bindRoots": ["{srv}"]}),
        ("{srv}/manifests:/m", {"bindRoots": ["{srv}"], "manifestDir": "{srv}/manifests"}),
    ],
)
def test_binds_of_or_around_the_manifest_root_are_refused(
    project: Path, volume: str, top: dict[str, Any]
) -> None:
    names = {"project": project, "srv": project.parent}
    filled = {
        k: [x.format(**names) for x in v] if isinstance(v, list) else v.format(**names)
        for k, v in top.items()
    }
    with pytest.raises(ConfigError) as raised:
        parse(
            _stack(project, {"volumes": [volume.format(**names)]}, **filled),
            stack="t",
            cwd=str(project),
        )
    (problem,) = raised.value.problems
    # Long values are shortened in messages: the key and the verdict are what must show.
    assert problem.startswith("dockyard:environments[0].volumes[0]: '")
    assert "is not allowed" in problem
    assert "manifest directory" in problem
    assert "(allowed:" in problem


def test_the_program_mounts_the_manifest_root_read_only_wherever_a_bind_shows_it(
    project: Path,
) -> None:
    (project / "src").mkdir()
    run = record(
        {
            "cwd": str(project),
            "environments": [
                {"sessionId": "bound", "workspaceHostPath": str(project)},
                {"sessionId": "mounted", "volumes": [f"{project}:/code", f"{project}/src:/src"]},
                {"sessionId": "plain"},
            ],
        }
    )
    guards: dict[str, list[dict[str, Any]]] = {}
    for container in run.of_type(CONTAINER):
        guards[container.name] = [
            v
            for v in container.inputs.get("volumes", [])
            if v.get("hostPath", "").endswith(".companion")
        ]
    root = str(project / ".companion")
    assert guards["env-bound-container"] == [
        {"containerPath": "/workspace/.companion", "hostPath": root, "readOnly": True}
    ]
    assert guards["env-mounted-container"] == [
        {"containerPath": "/code/.companion", "hostPath": root, "readOnly": True}
    ]
    assert guards["env-plain-container"] == []
