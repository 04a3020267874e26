"""Names over (tenant, session) on the engine (issue 25 items 10 and 6), through the
installed ``dockyard`` command with the harness driver (as test_sessions_on_engine.py).

- tenant ``<t>-x`` with session ``web`` and tenant ``<t>`` with session ``x-web`` (one
  engine name each before) both create and destroy independently;
- ``up -s <web> --tenant sessions`` is refused, creates nothing, and the untenanted
  session ``<web>`` keeps running, listed and destroyable;
- two sessions declaring the same named volume do not see each other's files; a volume the
  host settings list in ``sharedVolumes`` is shared within one tenant, never across.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import docker
import pytest

from tests.support.cli import DOCKYARD
from tests.support.cli import Cli as SupportCli
from tests.support.engine import RUN_ID, is_ready, remove_volume, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TENANT = f"n{RUN_ID[:8]}"
TENANT_X = f"{TENANT}-x"
OTHER = f"o{RUN_ID[:8]}"
WEB = f"web{RUN_ID[:6]}"
"""The untenanted session of the reserved-name case."""
MOUNT = "/home/agent/.npm"
SHARED = f"shared{RUN_ID[:6]}"


@dataclass
class Cli(SupportCli):
    settings: Path

    timeout: ClassVar[float] = 300

    def up(self, session: str, tenant: str | None, *volumes: str) -> dict[str, Any]:
        request: dict[str, Any] = {
            "sessionId": session,
            "cwd": str(self.project),
            "container": {"volumes": list(volumes)},
            **({"tenant": tenant} if tenant else {}),
        }
        result = self.run("up", "--json", "--request", "-", stdin=json.dumps(request))
        assert result.returncode == 0, (session, tenant, result.stdout, result.stderr)
        return json.loads(result.stdout)

    def down(self, session: str, tenant: str | None) -> None:
        result = self.run("down", session, *(("--tenant", tenant) if tenant else ()), "--json")
        assert result.returncode == 0, (session, tenant, result.stdout, result.stderr)


def _selectors() -> list[dict[str, Any]]:
    return [
        *({"label": f"dockyard.tenant={t}"} for t in (TENANT, TENANT_X, OTHER)),
        {"label": f"dockyard.session={WEB}"},
    ]


def _sweep(client: docker.DockerClient) -> None:
    for selector in _selectors():
        for container in client.containers.list(all=True, filters=selector):
            container.remove(force=True, v=True)
        for network in client.networks.list(filters=selector):
            network.remove()
        for volume in client.volumes.list(filters=selector):
            remove_volume(volume)
    # Shared volumes outlive their sessions (they carry no session's labels): by name.
    for volume in client.volumes.list():
        if SHARED in volume.name or RUN_ID[:8] in volume.name:
            remove_volume(volume)


def _objects(client: docker.DockerClient, tenant: str | None, session: str) -> list[str]:
    labels = [f"dockyard.session={session}"]
    labels.append(f"dockyard.tenant={tenant}" if tenant else "dockyard.stack=sessions")
    selector = {"label": labels}
    return sorted(
        [
            *(f"container {c.name}" for c in client.containers.list(all=True, filters=selector)),
            *(f"network {n.name}" for n in client.networks.list(filters=selector)),
            *(f"volume {v.name}" for v in client.volumes.list(filters=selector)),
        ]
    )


@pytest.fixture(scope="module")
def cli(
    docker_client: docker.DockerClient, core_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cli]:
    assert DOCKYARD.is_file(), f"the dockyard console script is not installed at {DOCKYARD}"
    base = tmp_path_factory.mktemp("names")
    state, project = base / "state", base / "project"
    state.mkdir()
    project.mkdir()
    (state / "image.json").write_text(json.dumps({"imageRef": core_image}))
    settings = base / "settings.yaml"
    settings.write_text(json.dumps({"healthcheck": {"interval": "5s"}, "sharedVolumes": [SHARED]}))
    env = {
        **os.environ,
        "DOCKYARD_STATE_DIR": str(state),
        "DOCKYARD_CONFIG": str(settings),
        "DOCKYARD_DRIVER": "tests.harness.sessions:HarnessDriver",
        "PYTHONPATH": str(REPO),
    }
    try:
        yield Cli(env, project, settings)
    finally:
        _sweep(docker_client)


def _root(container: Any, script: str) -> tuple[int, str]:
    result = container.exec_run(["sh", "-c", script], user="0")
    return result.exit_code, result.output.decode(errors="replace")


def test_two_tenants_whose_names_aliased_create_and_destroy_independently(
    cli: Cli, docker_client: docker.DockerClient
) -> None:
    first = cli.up("x-web", TENANT, f"npm:{MOUNT}")
    second = cli.up("web", TENANT_X, f"npm:{MOUNT}")
    assert first["container"]["name"] == f"dockyard-t.{TENANT}.x-web"
    assert second["container"]["name"] == f"dockyard-t.{TENANT_X}.web"
    a = docker_client.containers.get(first["container"]["id"])
    b = docker_client.containers.get(second["container"]["id"])
    for container in (a, b):
        wait_for(lambda c=container: is_ready(c), 120, what=f"{container.name} ready")
    # Item 6: the same declared volume is two volumes, each its session's own.
    mounts = {
        c.name: {m["Destination"]: m["Name"] for m in c.attrs["Mounts"] if m.get("Name")}
        for c in (a, b)
    }
    assert mounts[a.name][MOUNT] == f"dockyard-t.{TENANT}.x-web-vol-npm"
    assert mounts[b.name][MOUNT] == f"dockyard-t.{TENANT_X}.web-vol-npm"
    assert _root(a, f"echo planted > {MOUNT}/pkg") == (0, "")
    assert _root(b, f"ls -A {MOUNT}") == (0, "")
    own = docker_client.volumes.get(mounts[a.name][MOUNT]).attrs["Labels"]
    assert (own["dockyard.tenant"], own["dockyard.session"]) == (TENANT, "x-web")

    before_b = _objects(docker_client, TENANT_X, "web")
    assert len(before_b) >= 6, before_b  # container, network, fixed volumes, its npm volume
    cli.down("x-web", TENANT)
    assert _objects(docker_client, TENANT, "x-web") == []
    assert _objects(docker_client, TENANT_X, "web") == before_b
    b.reload()
    assert b.status == "running"
    assert (
        json.loads(cli.run("show", "web", "--tenant", TENANT_X, "--json").stdout)["container"]["id"]
        == b.id
    )
    cli.down("web", TENANT_X)
    assert _objects(docker_client, TENANT_X, "web") == []


def test_the_untenanted_namespace_is_no_tenants_name(
    cli: Cli, docker_client: docker.DockerClient
) -> None:
    web = cli.up(WEB, None)
    container = docker_client.containers.get(web["container"]["id"])
    assert container.name == f"dockyard-sessions-{WEB}"
    before = _objects(docker_client, None, WEB)
    result = cli.run("up", "--json", "-s", WEB, "--tenant", "sessions", "--cwd", str(cli.project))
    assert result.returncode == 2, (result.stdout, result.stderr)
    (problem,) = json.loads(result.stdout)["error"]["problems"]
    assert problem.startswith("request.tenant: 'sessions' is not allowed (allowed: a tenant name")
    assert "other than 'sessions' (reserved: the namespace of sessions without a tenant)" in (
        problem
    )
    assert (
        docker_client.containers.list(all=True, filters={"label": "dockyard.tenant=sessions"}) == []
    )
    assert _objects(docker_client, None, WEB) == before
    container.reload()
    assert container.status == "running"
    rows = json.loads(cli.run("ls", "--json").stdout)
    assert [r["sessionId"] for r in rows if r["sessionId"] == WEB] == [WEB]
    cli.down(WEB, None)
    assert _objects(docker_client, None, WEB) == []


def test_a_shared_volume_is_shared_within_one_tenant_only(
    cli: Cli, docker_client: docker.DockerClient
) -> None:
    target = "/home/agent/.cache"
    one = cli.up("one", TENANT, f"{SHARED}:{target}")
    two = cli.up("two", TENANT, f"{SHARED}:{target}")
    other = cli.up("one", OTHER, f"{SHARED}:{target}")
    containers = [docker_client.containers.get(m["container"]["id"]) for m in (one, two, other)]
    for container in containers:
        wait_for(lambda c=container: is_ready(c), 120, what=f"{container.name} ready")
    names = [
        {m["Destination"]: m["Name"] for m in c.attrs["Mounts"] if m.get("Name")}[target]
        for c in containers
    ]
    assert names == [f"dockyard-t.{TENANT}._{SHARED}"] * 2 + [f"dockyard-t.{OTHER}._{SHARED}"]
    assert _root(containers[0], f"echo from-one > {target}/note") == (0, "")
    assert _root(containers[1], f"cat {target}/note") == (0, "from-one\n")
    assert _root(containers[2], f"ls -A {target}") == (0, "")
    for session, tenant in (("one", TENANT), ("two", TENANT), ("one", OTHER)):
        cli.down(session, tenant)
    # Shared: it outlives the sessions that used it (removed by the module's sweep).
    assert docker_client.volumes.get(names[0]).name == names[0]


def test_a_create_never_adopts_an_object_of_its_names_that_is_anothers(
    cli: Cli, docker_client: docker.DockerClient
) -> None:
    """What no registry here knows (another machine's session on this engine, a stack
    file's environment, anything unlabelled) but holds a new session's name: the create
    is refused before anything is made, and that object keeps its contents."""
    stray = docker_client.volumes.create(
        f"dockyard-t.{TENANT}.stray-workspace",
        labels={"dockyard.session": "someone", "dockyard.stack": "elsewhere"},
    )
    try:
        docker_client.containers.run(
            "debian:bookworm-slim", ["sh", "-c", "echo theirs > /v/file"],
            volumes={stray.name: {"bind": "/v"}}, remove=True,
        )  # fmt: skip
        request = {"sessionId": "stray", "cwd": str(cli.project), "tenant": TENANT}
        result = cli.run("up", "--json", "--request", "-", stdin=json.dumps(request))
        assert result.returncode == 1, (result.stdout, result.stderr)
        (problem,) = json.loads(result.stdout)["error"]["problems"]
        assert problem.startswith(
            f"the engine already has a volume named '{stray.name}', and it is session "
            "'someone' of stack 'elsewhere''s: session 'stray' would adopt it; nothing was "
            "created"
        ), problem
        assert _objects(docker_client, TENANT, "stray") == []
        assert docker_client.networks.list(names=[f"dockyard-t.{TENANT}.stray"]) == []
        kept = docker_client.containers.run(
            "debian:bookworm-slim", ["cat", "/v/file"], volumes={stray.name: {"bind": "/v"}},
            remove=True,
        )  # fmt: skip
        assert kept == b"theirs\n"
        assert all(r["sessionId"] != "stray" for r in json.loads(cli.run("ls", "--json").stdout))
    finally:
        stray.remove(force=True)
