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

import getpass
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.ansible import manifest_inventory, run_playbook
from tests.support.engine import RUN_ID, exec_ok, unique_name
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


def test_the_check_holds_over_connections_that_do_not_go_through_the_engine(
    envs: Deployed, tmp_path: Path
) -> None:
    """Over ssh (the environment's sshd), local or any connection that names no engine,
    the role reads the label from git_credentials_docker_host too, and fails closed when
    it cannot: no connection type writes the real token into a brokered environment.
    Shown with ``local`` connections (the role's tasks then write on this machine, into
    tmp_path), one host per case: the brokered container, a container the engine does not
    know, and the files one (its token is written: the check refuses by label, not by
    connection)."""
    cases = {
        "via-local-brokered": envs.manifests["gc-brokered"]["container"]["name"],
        "via-local-unreadable": unique_name("no-such-container"),
        "via-local-files": envs.manifests["gc-files"]["container"]["name"],
    }
    lines = ["[dockyard]"]
    for host, container in cases.items():
        where = tmp_path / host
        variables = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "git_credentials_container": container,
            "git_credentials_token_file": str(where / "secrets" / "GITHUB_TOKEN"),
            "git_credentials_gitconfig": str(where / "gitconfig"),
            "git_credentials_helper_path": str(where / "git-askpass"),
            "git_credentials_user": getpass.getuser(),
        }
        lines.append(f"{host} " + " ".join(f"{k}={json.dumps(v)}" for k, v in variables.items()))
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("\n".join(lines) + "\n")
    playbook = tmp_path / "git-credentials.yml"
    playbook.write_text(
        "- name: Only git_credentials\n  hosts: dockyard\n  gather_facts: false\n"
        "  roles:\n    - role: git_credentials\n"
    )

    run = run_playbook(
        str(playbook),
        inventory=inventory,
        extra_vars={"git_credentials_token": PLAYBOOK_TOKEN},
        check=False,
    )

    flat = " ".join(run.output.split())
    assert PLAYBOOK_TOKEN not in run.output
    brokered = cases["via-local-brokered"]
    assert (
        f"git_credentials_token is not written to via-local-brokered ({brokered}): its engine "
        "says credentials brokered (container label dockyard.credentials)"
    ) in flat, run.output[-3000:]
    assert (
        "git_credentials_token is not written to via-local-unreadable: its credential mode "
        f"cannot be read (container {cases['via-local-unreadable']} on the local engine over "
        "connection local:"
    ) in flat, run.output[-3000:]
    assert run.recap["via-local-brokered"]["failed"] == 1, run.output[-3000:]
    assert run.recap["via-local-unreadable"]["failed"] == 1, run.output[-3000:]
    # The files one passes the check and gets its token (the role's later check that git
    # uses the helper needs facts this play does not gather, and would read this
    # machine's own gitconfig: no business of this test).
    assert "git_credentials_token is not written to via-local-files" not in flat
    assert not (tmp_path / "via-local-brokered" / "secrets").exists()
    assert not (tmp_path / "via-local-unreadable" / "secrets").exists()
    written = tmp_path / "via-local-files" / "secrets" / "GITHUB_TOKEN"
    assert written.read_text() == PLAYBOOK_TOKEN
