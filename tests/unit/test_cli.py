"""The installed `dockyard` command without an engine: JSON on stdout, documented exit
codes, every problem at once. (Its lifecycle on the engine:
tests/integration/test_sessions_on_engine.py.)"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from dockyard import cli

REPO = Path(__file__).resolve().parents[2]
DOCKYARD = Path(sys.executable).with_name("dockyard")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")},
        "HOME": str(tmp_path),
        "DOCKYARD_STATE_DIR": str(tmp_path / "state"),
    }


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, Any, str]:
    result = subprocess.run(
        [str(DOCKYARD), *args], env=env, input=stdin, capture_output=True, text=True, check=False
    )
    data = (
        json.loads(result.stdout) if result.stdout.strip().startswith(("{", "[")) else result.stdout
    )
    return result.returncode, data, result.stderr


def test_validate_a_good_and_a_bad_stack(env: dict[str, str], tmp_path: Path) -> None:
    code, data, _ = run(
        env, "validate", "--stack", str(REPO / "stacks" / "Pulumi.team.yaml"), "--json"
    )
    assert code == 0
    assert (data["valid"], data["stack"], len(data["sessions"])) == (True, "team", 4)
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text(
        "config:\n  dockyard:environments:\n    - sessionId: a\n      ports: [0]\n"
        "      env: {GITHUB_TOKEN: ghp_canary}\n      workspace_host_path: /x\n"
    )
    code, data, _ = run(env, "validate", "--stack", str(bad), "--json")
    assert code == 2
    keys = [p.split(": ", 1)[0] for p in data["error"]["problems"]]
    assert keys == [
        "dockyard:environments[0].env.GITHUB_TOKEN",
        "dockyard:environments[0].ports[0]",
        "dockyard:environments[0].workspace_host_path",
    ]
    assert "ghp_canary" not in json.dumps(data)


def test_validate_a_request_from_stdin(env: dict[str, str]) -> None:
    request = {
        "sessionId": "s1",
        "cwd": "/srv/app",
        "container": {"image": "ubuntu:24.04", "ports": [3000]},
    }
    code, data, _ = run(env, "validate", "--request", "-", "--json", stdin=json.dumps(request))
    assert (code, data) == (
        0,
        {"valid": True, "stack": "sessions.s1", "sessions": ["s1"], "warnings": []},
    )
    code, data, _ = run(env, "validate", "--request", "-", "--json", stdin="{not json")
    assert code == 2
    assert data["error"]["problems"][0].startswith("--request -: not JSON (line 1")


def test_exit_codes_for_unknown_sessions_and_usage(env: dict[str, str]) -> None:
    code, data, _ = run(env, "show", "nope", "--json")
    assert code == 4
    assert data["error"]["problems"] == ["no session 'nope' on this machine"]
    assert run(env, "down", "nope")[0] == 4
    assert run(env, "validate", "--json")[0] == 2
    assert run(env, "up", "--port", "x")[0] == 2
    assert run(env, "ls", "--json")[:2] == (0, [])
    assert run(env, "audit", "--json")[:2] == (0, [])


def test_up_without_an_image_says_how_to_get_one(env: dict[str, str], tmp_path: Path) -> None:
    code, data, _ = run(env, "up", "-s", "s1", "--cwd", str(tmp_path), "--json")
    assert code == 2
    assert "dockyard image build" in data["error"]["problems"][0]
    # The refusal is audited, and nothing was recorded as a session.
    code, entries, _ = run(env, "audit", "--json")
    assert [(e["action"], e["result"], e["session"]) for e in entries] == [
        ("create", "error", "s1")
    ]
    assert run(env, "ls", "--json")[1] == []


def test_plan_modal_previews_a_manifest(env: dict[str, str], tmp_path: Path) -> None:
    doc = (REPO / "docs" / "manifest.md").read_text()
    example = (
        json.loads(doc.split("```json", 2)[2].split("```", 1)[0])
        if doc.count("```json") > 1
        else None
    )
    assert example is not None
    path = tmp_path / "m.json"
    path.write_text(json.dumps(example))
    code, out, err = run(env, "plan", "modal", str(path))
    assert code == 0, err
    assert "modal.Sandbox.create" in out or "Sandbox" in out


def test_every_verb_module_is_registered_on_the_app() -> None:
    """A verb module's Typer (``verbs``, or a group) is added to the root app in
    dockyard/cli/__init__.py: a module whose verbs were never registered fails here."""
    registered = {id(group.typer_instance) for group in cli.app.registered_groups}
    unregistered = [
        f"dockyard.cli.{info.name}.{name}"
        for info in pkgutil.iter_modules(cli.__path__)
        if info.name != "__main__"  # runs the command
        for name, value in vars(importlib.import_module(f"dockyard.cli.{info.name}")).items()
        if isinstance(value, typer.Typer) and value is not cli.app and id(value) not in registered
    ]
    assert not unregistered, f"add these to dockyard/cli/__init__.py: {unregistered}"
    assert len(registered) >= 5, "the verb modules register their own Typers"
