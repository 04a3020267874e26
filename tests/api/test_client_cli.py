"""`dockyard up/ls/show/refresh/down --server URL` against a real `dockyard serve` on
loopback and the real engine (the harness driver where Pulumi would run): the same
output and exit codes as the same verbs run on the server's own machine (the local CLI
on the server's state), errors included; another tenant's key sees a missing session."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from dockyard import client
from dockyard.cli import remote
from tests.api.test_client import DOCKYARD, Served, start_server
from tests.support.engine import RUN_ID, remove_volume

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TENANT = f"c{RUN_ID[:8]}"
OTHER = f"d{RUN_ID[:8]}"


@pytest.fixture(scope="module")
def served(
    docker_client: docker.DockerClient,
    core_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("client-cli")
    (base / "state").mkdir()
    (base / "state" / "image.json").write_text(json.dumps({"imageRef": core_image}))
    (base / "project").mkdir()
    try:
        yield from start_server(base, {"DOCKYARD_DRIVER": "tests.harness.sessions:HarnessDriver"})
    finally:
        selector = {"label": f"dockyard.stack={TENANT}"}
        for container in docker_client.containers.list(all=True, filters=selector):
            container.remove(force=True, v=True)
        for network in docker_client.networks.list(filters=selector):
            network.remove()
        for volume in docker_client.volumes.list(filters=selector):
            remove_volume(volume)


def cli(served: Served, key: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI through the server (``key``), or on the server's machine (None)."""
    env = {**served.env, "COLUMNS": "200"}
    env.pop(remote.SERVER_VARIABLE, None)
    if key is not None:
        env[client.KEY_VARIABLE] = key
        args = (*args, "--server", served.url)
    return subprocess.run(
        [str(DOCKYARD), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_the_lifecycle_verbs_through_the_server_print_what_they_print_locally(
    served: Served, docker_client: docker.DockerClient
) -> None:
    assert remote.SERVER_VARIABLE == client.SERVER_VARIABLE
    key = served.key("--tenant", TENANT)
    other = served.key("--tenant", OTHER)
    project = str(Path(served.env["DOCKYARD_STATE_DIR"]).parent / "project")

    up = cli(served, key, "up", "-s", "c1", "--cwd", project, "-p", "3000", "--json")
    assert up.returncode == 0, up.stderr
    manifest = json.loads(up.stdout)
    assert docker_client.containers.get(manifest["container"]["id"]).status == "running"
    # show, ls: the same text through the server as on its machine.
    for args in (("show", "c1"), ("show", "c1", "--json"), ("ls",)):
        through = cli(served, key, *args)
        local = cli(served, None, *args, "--tenant", TENANT)
        assert (through.returncode, through.stdout) == (0, local.stdout), (args, through.stderr)
    listed = json.loads(cli(served, key, "ls", "--json").stdout)
    assert [(r["sessionId"], r["tenant"], r["container"]) for r in listed] == [
        ("c1", TENANT, manifest["container"]["name"])
    ]
    # Errors: the exit code and the lines of the local verb.
    for args in (
        ("show", "nosuch"),
        ("up", "-s", "bad one", "--cwd", project, "-p", "0"),
        ("up", "--cwd", project),
        ("refresh", "nosuch", "--json"),
    ):
        through = cli(served, key, *args)
        local = cli(served, None, *args, "--tenant", TENANT)
        assert through.returncode == local.returncode != 0, (args, through.stderr, local.stderr)
        assert (through.stdout, through.stderr) == (local.stdout, local.stderr), args
    # Another tenant's key: the session is a missing one (exit 4, the same lines).
    hidden = cli(served, other, "show", "c1")
    missing = cli(served, other, "show", "nosuch")
    assert hidden.returncode == missing.returncode == 4
    assert hidden.stderr == missing.stderr.replace("nosuch", "c1")
    assert cli(served, other, "down", "c1").returncode == 4
    # A wrong key: exit 1 with the server's line; an empty one is refused before any request.
    wrong = cli(served, "dk_wrong", "ls")
    assert (wrong.returncode, wrong.stderr.strip()) == (
        1,
        "ERROR: the API key is unknown or revoked",
    )
    empty = cli(served, "", "ls")
    assert empty.returncode == 2
    assert "api key: empty" in empty.stderr

    refreshed = cli(served, key, "refresh", "c1", "--json")
    assert refreshed.returncode == 0, refreshed.stderr
    new = json.loads(refreshed.stdout)
    assert new["container"]["id"] != manifest["container"]["id"]
    assert docker_client.containers.get(new["container"]["id"]).status == "running"

    down = cli(served, key, "down", "c1")
    assert (down.returncode, down.stdout.strip()) == (0, "destroyed c1"), down.stderr
    selector = {"label": [f"dockyard.stack={TENANT}", "dockyard.session=c1"]}
    assert docker_client.containers.list(all=True, filters=selector) == []
    assert cli(served, key, "show", "c1").returncode == 4


def test_a_create_past_the_quota_exits_3_with_the_servers_line(served: Served) -> None:
    settings = Path(served.env["DOCKYARD_CONFIG"])
    kept = settings.read_text()
    settings.write_text(
        json.dumps({**json.loads(kept), "quotas": {"tenants": {TENANT: {"environments": 0}}}})
    )
    try:
        key = served.key("--tenant", TENANT)
        project = str(Path(served.env["DOCKYARD_STATE_DIR"]).parent / "project")
        refused = cli(served, key, "up", "-s", "q1", "--cwd", project, "--json")
    finally:
        settings.write_text(kept)
    assert refused.returncode == 3, refused.stderr
    error = json.loads(refused.stdout)["error"]
    assert error["kind"] == "quota"
    assert error["problems"] == [
        f"quota: tenant {TENANT} on host local allows environments 0; 0 in use, "
        "session q1 asks 1 more"
    ]
