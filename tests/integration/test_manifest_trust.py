"""Manifests the agent cannot rewrite (issue 25 item 5), on the engine.

With the project directory bound as the workspace, the manifests and host files under
``<cwd>/.companion`` are where host tools look: the environment sees that directory
read-only and cannot move it aside."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.engine import exec_ok
from tests.support.stacks import Deployed

pytestmark = [pytest.mark.docker, pytest.mark.slow]

AGENT_UID = 1000


def _attempt(container: Any, script: str) -> tuple[int, str]:
    result = container.exec_run(["sh", "-c", script], user=f"{AGENT_UID}")
    return result.exit_code, (result.output or b"").decode(errors="replace")


def test_the_agent_cannot_rewrite_or_move_the_projects_manifests(
    deploy_own: Callable[..., Deployed], tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    # The project directory becomes the workspace: the agent owns it, as a user's would be.
    os.chown(project, AGENT_UID, AGENT_UID)
    stack = deploy_own(
        "mtrust",
        {
            "cwd": str(project),
            "environments": [
                {"sessionId": "own", "backend": "claude", "workspaceHostPath": str(project)}
            ],
        },
    )
    stack.wait_ready()
    container = stack.container("own")
    manifest = project / ".companion" / "cloud" / "environments" / "own.json"
    before = manifest.read_bytes()

    # The bind itself is writable: the positive control.
    exec_ok(container, ["sh", "-c", "echo mine > /workspace/notes.txt"], user=f"{AGENT_UID}")
    assert (project / "notes.txt").read_text() == "mine\n"
    # The manifest directory is visible (read-only) where the bind shows it.
    exec_ok(container, ["test", "-f", "/workspace/.companion/cloud/environments/own.json"])

    attempts = {
        "rewrite a manifest": "echo '{}' > /workspace/.companion/cloud/environments/own.json",
        "plant another session's manifest": (
            "echo '{}' > /workspace/.companion/cloud/environments/other.json"
        ),
        "plant a host file": "echo '{}' > /workspace/.companion/cloud/environments/x.host.json",
        "move the directory aside": "mv /workspace/.companion /workspace/moved",
        "replace it with a symlink": "rm -rf /workspace/.companion && ln -s /tmp /workspace/.companion",
        "change its mode": "chmod 0777 /workspace/.companion/cloud/environments",
    }
    succeeded = {}
    for what, script in attempts.items():
        code, output = _attempt(container, script)
        if code == 0:
            succeeded[what] = output
    assert not succeeded, f"the agent could: {succeeded}"
    assert manifest.read_bytes() == before
    assert not (project / "moved").exists()
    assert (project / ".companion").is_dir()
    assert not (project / ".companion").is_symlink()
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["own.json"]
