"""git_credentials never writes the real token into a brokered environment (issue 25
item 7), on the engine.

Two environments realised from one stack, both with GITHUB_TOKEN: one ``credentials:
brokered`` (its broker holds the token; the environment's file holds only the broker's
stand-in), one ``credentials: files``. playbooks/environments.yml through the manifest
inventory, with git_credentials_token set: the brokered one is refused, naming it and
why, and its token file still holds the stand-in; the files one gets the token. The
mode is read from the engine's label on the container, never from anything inside the
environment (which the agent can rewrite).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.ansible import manifest_inventory, run_playbook
from tests.support.engine import RUN_ID, exec_ok
from tests.support.stacks import Deployed

pytestmark = pytest.mark.docker

STACK_TOKEN = f"ghp_stack_canary_{RUN_ID}"
PLAYBOOK_TOKEN = f"ghp_playbook_canary_{RUN_ID}"


@pytest.fixture(scope="module")
def envs(deploy: Any) -> Deployed:
    values = {
        "broker": {"git": "https://git.example.com"},
        "environments": [
            {"sessionId": "gc-brokered", "credentials": "brokered", "secrets": ["GITHUB_TOKEN"]},
            {"sessionId": "gc-files", "secrets": ["GITHUB_TOKEN"]},
        ],
    }
    deployed = deploy("gitcred", values, {"GITHUB_TOKEN": STACK_TOKEN})
    deployed.wait_ready(timeout=120)
    return deployed


def token_file(envs: Deployed, session: str) -> str:
    return exec_ok(envs.container(session), ["cat", "/run/secrets/GITHUB_TOKEN"], user="1000")


def test_the_token_is_refused_for_a_brokered_environment_and_written_for_files(
    envs: Deployed,
) -> None:
    brokered = envs.manifests["gc-brokered"]["container"]["name"]
    files = envs.manifests["gc-files"]["container"]["name"]
    assert envs.container("gc-brokered").labels["dockyard.credentials"] == "brokered"
    assert envs.container("gc-files").labels["dockyard.credentials"] == "files"
    stand_in = token_file(envs, "gc-brokered")
    assert stand_in.startswith("dockyard-broker-")
    inventory = manifest_inventory(
        envs.cwd / "inventory.dockyard_manifests.yml", envs.cwd / ".companion/cloud/environments"
    )

    run = run_playbook(
        "environments.yml",
        inventory=inventory,
        extra_vars={"git_credentials_token": PLAYBOOK_TOKEN},
        check=False,
    )

    assert run.rc != 0, run.output[-3000:]
    assert PLAYBOOK_TOKEN not in run.output
    assert (
        f"git_credentials_token is not written to {brokered} ({brokered}): its engine says "
        "credentials brokered (container label dockyard.credentials). In a brokered "
        "environment the real token would be readable by the agent in /run/secrets/GITHUB_TOKEN; "
        "its credential broker holds GITHUB_TOKEN"
    ) in " ".join(run.output.split()), run.output[-3000:]
    assert token_file(envs, "gc-brokered") == stand_in
    holders = exec_ok(
        envs.container("gc-brokered"),
        ["bash", "-c", f"grep -rlsF '{PLAYBOOK_TOKEN}' /run /home /config /tmp /workspace || true"],
        user="root",
    )
    assert holders.split() == []
    # Only the brokered host failed; the files-mode one is configured as before.
    assert {host: c["failed"] for host, c in run.recap.items()} == {brokered: 1, files: 0}
    assert token_file(envs, "gc-files") == PLAYBOOK_TOKEN
