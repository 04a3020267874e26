"""playbooks/environments.yml through the manifest inventory, on environments realised
from a stack: agent_config and git_credentials, each run twice (second: changed=0)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.ansible import (
    TargetFleet,
    list_inventory,
    manifest_inventory,
    run_playbook,
)
from tests.support.engine import exec_ok
from tests.support.stacks import CANARIES, Deployed

pytestmark = pytest.mark.docker

TOKEN = CANARIES["GITHUB_TOKEN"]
CONFIG_VARS: dict[str, Any] = {
    "agent_config_project_name": "shop",
    "agent_config_project_description": "An online shop (Django + React).",
    "agent_config_conventions": ["Run `make test` before every commit.", "Keep PRs small."],
    "agent_config_tools": [
        {"name": "rg", "usage": "search code"},
        {"name": "make test", "usage": "run the tests"},
    ],
    "agent_config_mcp_servers": {
        "docs": {
            "command": "npx",
            "args": ["-y", "docs-mcp"],
            "env": {"DOCS_ROOT": "/workspace/docs"},
        }
    },
    "agent_config_claude_agents": {
        "reviewer": "---\nname: reviewer\n---\nReview diffs for bugs.\n"
    },
}


@pytest.fixture(scope="module")
def envs(deploy: Any) -> Deployed:
    values = {
        "environments": [
            {"sessionId": "r-claude", "backend": "claude", "secrets": ["GITHUB_TOKEN"]},
            {"sessionId": "r-codex", "backend": "codex", "secrets": ["GITHUB_TOKEN"]},
        ]
    }
    return deploy("roles", values, {"GITHUB_TOKEN": TOKEN})


@pytest.fixture(scope="module")
def inventory(envs: Deployed) -> Path:
    return manifest_inventory(
        envs.cwd / "inventory.dockyard_manifests.yml", envs.cwd / ".companion/cloud/environments"
    )


def test_inventory_has_one_host_per_environment(envs: Deployed, inventory: Path) -> None:
    listing = list_inventory(inventory)
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    names = {s: envs.manifests[s]["container"]["name"] for s in envs.manifests}
    assert sorted(data["dockyard"]["hosts"]) == sorted(names.values())
    assert data["claude"]["hosts"] == [names["r-claude"]]
    assert data["codex"]["hosts"] == [names["r-codex"]]
    assert sorted(data[f"stack_{envs.stack}"]["hosts"]) == sorted(names.values())
    # ansible-core 2.19 marks plugin-provided values untrusted (never templated).
    hostvars = plain(data["_meta"]["hostvars"][names["r-codex"]])
    assert hostvars["ansible_connection"] == "community.docker.docker"
    assert hostvars["dockyard_session_id"] == "r-codex"
    assert hostvars["dockyard_stack"] == envs.stack
    assert hostvars["dockyard_manifest"] == envs.manifests["r-codex"]


def plain(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def test_environments_playbook_configures_and_is_idempotent(
    envs: Deployed, inventory: Path
) -> None:
    # The user's own settings must survive dockyard's.
    for session in envs.manifests:
        exec_ok(
            envs.container(session),
            [
                "bash",
                "-c",
                'echo \'{"theme": "dark", "permissions": {"allow": ["Bash(ls)"]}}\' > /config/claude/settings.json',
            ],
        )
    first = run_playbook(
        "environments.yml", inventory=inventory, extra_vars=CONFIG_VARS, args=["-v"]
    )
    second = run_playbook(
        "environments.yml", inventory=inventory, extra_vars=CONFIG_VARS, args=["-v"]
    )
    assert set(second.changed().values()) == {0}, second.output[-4000:]
    assert all(count > 0 for count in first.changed().values())
    assert TOKEN not in first.output + second.output

    for session in envs.manifests:
        container = envs.container(session)
        settings = json.loads(exec_ok(container, ["cat", "/config/claude/settings.json"]))
        assert settings == {
            "theme": "dark",
            "permissions": {"allow": ["Bash(ls)"], "deny": ["Read(/run/secrets/**)"]},
        }
        codex = json.loads(
            exec_ok(
                container,
                [
                    "python3",
                    "-c",
                    "import json,tomllib;print(json.dumps(tomllib.load(open('/config/codex/config.toml','rb'))))",
                ],
            )
        )
        assert codex["sandbox_mode"] == "danger-full-access"
        assert codex["mcp_servers"]["docs"] == {
            "command": "npx",
            "args": ["-y", "docs-mcp"],
            "env": {"DOCS_ROOT": "/workspace/docs"},
        }
        claude_json = json.loads(exec_ok(container, ["cat", "/config/claude/.claude.json"]))
        assert claude_json["mcpServers"]["docs"]["command"] == "npx"
        claude_md = exec_ok(container, ["cat", "/config/claude/CLAUDE.md"])
        assert claude_md.startswith("# shop\n")
        assert "- Run `make test` before every commit." in claude_md
        assert "- `rg`: search code" in claude_md
        modes = exec_ok(
            container,
            [
                "stat",
                "-c",
                "%n %a %U",
                "/config/claude/CLAUDE.md",
                "/config/claude/settings.json",
                "/config/claude/.claude.json",
                "/config/codex/config.toml",
                "/config/claude/agents/reviewer.md",
                "/home/agent/.gitconfig",
            ],
        )
        assert modes.splitlines() == [
            "/config/claude/CLAUDE.md 644 agent",
            "/config/claude/settings.json 644 agent",
            "/config/claude/.claude.json 600 agent",
            "/config/codex/config.toml 600 agent",
            "/config/claude/agents/reviewer.md 644 agent",
            "/home/agent/.gitconfig 644 agent",
        ]
        # git pushes over HTTPS get the token through the helper; it is stored nowhere else.
        filled = exec_ok(
            container,
            ["bash", "-c", "printf 'protocol=https\\nhost=github.com\\n\\n' | git credential fill"],
            user="1000:1000",
        )
        assert f"password={TOKEN}" in filled.splitlines()
        holders = exec_ok(
            container,
            [
                "bash",
                "-c",
                f"grep -rlsF '{TOKEN}' /config /home /etc /usr/local /tmp /workspace /run || true",
            ],
            user="root",
        )
        assert holders.split() == [], f"token found in {holders.split()}"
        assert TOKEN not in exec_ok(container, ["cat", "/home/agent/.gitconfig"])


def test_vaulted_token_is_written_only_to_its_file(fleet: TargetFleet) -> None:
    (target,) = fleet.start()
    inventory = fleet.inventory([target])
    token = "ghp_vaulted_canary_4e5f"
    variables = {"git_credentials_token": token, "git_credentials_url": "https://github.com"}
    first = run_playbook("environments.yml", inventory=inventory, extra_vars=variables, args=["-v"])
    second = run_playbook(
        "environments.yml", inventory=inventory, extra_vars=variables, args=["-v"]
    )
    assert second.changed() == {target.name: 0}, second.output[-3000:]
    assert token not in first.output + second.output
    assert (
        exec_ok(target, ["stat", "-c", "%a %U", "/run/secrets/GITHUB_TOKEN"]).strip() == "400 agent"
    )
    gitconfig = exec_ok(target, ["cat", "/home/agent/.gitconfig"])
    assert '[credential "https://github.com"]' in gitconfig
    assert token not in gitconfig
    holders = exec_ok(
        target,
        [
            "bash",
            "-c",
            f"grep -rlsF '{token}' /config /home /etc /usr/local /tmp /workspace /run || true",
        ],
    )
    assert holders.split() == ["/run/secrets/GITHUB_TOKEN"]


def test_bad_manifest_is_reported_with_its_file(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "broken.json").write_text('{"version": 1, "sessionId": "x"}')
    inventory = manifest_inventory(tmp_path / "inv.dockyard_manifests.yml", manifests)
    result = list_inventory(inventory, {"ANSIBLE_INVENTORY_UNPARSED_FAILED": "true"})
    assert result.returncode != 0
    assert f"{manifests}/broken.json is not a valid v1 manifest" in result.stderr


def test_bad_variables_fail_before_the_token_or_any_file_is_written(fleet: TargetFleet) -> None:
    (target,) = fleet.start()
    inventory = fleet.inventory([target])
    before = exec_ok(target, ["bash", "-c", "find /config /home/agent -newer /etc/hostname | sort"])
    run = run_playbook(
        "environments.yml",
        inventory=inventory,
        extra_vars={
            "agent_config_project_name": "demo",
            "agent_config_mcp_servers": ["not", "a", "dict"],
            "git_credentials_token": "ghp_should_never_land_5a6b",
        },
        check=False,
    )
    assert run.rc != 0
    assert "argument 'agent_config_mcp_servers' is of type" in run.output
    assert "ghp_should_never_land_5a6b" not in run.output
    assert run.changed() == {target.name: 0}
    after = exec_ok(target, ["bash", "-c", "find /config /home/agent -newer /etc/hostname | sort"])
    assert after == before
