"""One stack across two real Docker engines: this machine's and a second one the test
starts (own socket, data root, exec root, bridge range). Placement, quotas, manifests
and host files, stickiness on re-run, and teardown are checked on both engines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pulumi
import pytest

from dockyard import hostfile
from dockyard import manifest as contract
from dockyard.config import HELPER_IMAGE
from tests.harness.docker_mocks import HarnessState
from tests.harness.multi_engine import MultiEngineMocks
from tests.support.ansible import REPO, VENV_BIN, list_inventory, manifest_inventory
from tests.support.engine import RUN_ID, is_ready, wait_for
from tests.support.program import ProgramRun, run_program
from tests.support.second_engine import Engine, second_engine

pytestmark = [pytest.mark.docker, pytest.mark.slow]

LOCAL = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
STACK = f"hosts{RUN_ID[:6]}"


@pytest.fixture(scope="module")
def engine2(core_image: str) -> Iterator[Engine]:
    root = Path(tempfile.mkdtemp(prefix="dockyard-e2-", dir="/var/tmp"))
    try:
        with second_engine(root, [core_image, HELPER_IMAGE]) as engine:
            yield engine
    finally:
        shutil.rmtree(root, ignore_errors=True)


class TwoHosts:
    def __init__(self, local: docker.DockerClient, engine2: Engine, cwd: Path, image: str) -> None:
        self.clients = {"one": local, "two": engine2.client}
        self.urls = {"one": LOCAL, "two": engine2.url}
        self.cwd = cwd
        self.image = image
        self.state = HarnessState()
        self.run: ProgramRun | None = None

    def mocks(self) -> MultiEngineMocks:
        return MultiEngineMocks(
            self.clients["one"], {self.urls[h]: self.clients[h] for h in self.urls}, self.state
        )

    def up(self, environments: list[dict[str, Any]], **top: Any) -> ProgramRun:
        values = {
            "cwd": str(self.cwd),
            "image": {"ref": self.image},
            "dockerHosts": self.urls,
            "environments": environments,
            **top,
        }
        self.run = run_program(self.mocks(), values, stack=STACK)
        return self.run

    def manifests(self) -> dict[str, dict[str, Any]]:
        assert self.run is not None
        return self.run.exports()

    def host_of(self, session: str) -> str:
        found = [
            host
            for host, client in self.clients.items()
            if client.containers.list(
                all=True,
                filters={"label": [f"dockyard.stack={STACK}", f"dockyard.session={session}"]},
            )
        ]
        assert len(found) == 1, f"{session} runs on {found}"
        return found[0]

    def leftovers(self) -> list[str]:
        selector = {"label": f"dockyard.stack={STACK}"}
        return [
            f"{host}: {kind} {item.name}"
            for host, client in self.clients.items()
            for kind, items in (
                ("container", client.containers.list(all=True, filters=selector)),
                ("network", client.networks.list(filters=selector)),
                ("volume", client.volumes.list(filters=selector)),
            )
            for item in items
        ]


@pytest.fixture(scope="module")
def hosts(
    docker_client: docker.DockerClient,
    engine2: Engine,
    core_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TwoHosts]:
    target = TwoHosts(docker_client, engine2, tmp_path_factory.mktemp("hosts"), core_image)
    try:
        yield target
    finally:
        try:
            target.mocks().destroy()
        finally:
            for client in target.clients.values():
                selector = {"label": f"dockyard.stack={STACK}"}
                for container in client.containers.list(all=True, filters=selector):
                    container.remove(force=True, v=True)
                for network in client.networks.list(filters=selector):
                    network.remove()
                for volume in client.volumes.list(filters=selector):
                    volume.remove(force=True)


ENVIRONMENTS = [
    {"sessionId": "pinned-one", "host": "one", "ports": [3000]},
    {"sessionId": "pinned-two", "host": "two", "ports": [3000]},
    {"sessionId": "placed-a", "ports": [3000]},
    {"sessionId": "placed-b", "ports": [3000]},
]


def test_one_stack_runs_on_both_engines(hosts: TwoHosts) -> None:
    # Whatever else this machine's engine runs, `one` is given room for exactly its
    # pinned environment and one more, so `two` has far more headroom: both placed ones
    # go there.
    running = len(
        hosts.clients["one"].containers.list(all=True, filters={"label": "dockyard.managed=true"})
    )
    hosts.up(
        ENVIRONMENTS, quotas={"environments": 500, "hosts": {"one": {"environments": running + 3}}}
    )
    manifests = hosts.manifests()
    assert hosts.host_of("pinned-one") == "one"
    assert hosts.host_of("pinned-two") == "two"
    assert (hosts.host_of("placed-a"), hosts.host_of("placed-b")) == ("two", "two")
    for session, manifest in manifests.items():
        contract.validate(manifest, session)
        host = hosts.host_of(session)
        container = hosts.clients[host].containers.get(manifest["container"]["id"])
        assert container.labels["dockyard.host"] == host
        wait_for(lambda c=container: is_ready(c), 90, what=f"{session} ready on {host}")
        # The manifest's host port is the engine's own (read back, not guessed).
        bindings = container.attrs["NetworkSettings"]["Ports"]["3000/tcp"]
        assert manifest["container"]["portMappings"] == [
            {"containerPort": 3000, "hostPort": int(bindings[0]["HostPort"])}
        ]
        written = hosts.cwd / ".companion" / "cloud" / "environments"
        assert json.loads((written / f"{session}.json").read_text()) == manifest
        host_file = json.loads((written / f"{session}{hostfile.SUFFIX}").read_text())
        hostfile.validate(host_file)
        assert host_file == {
            "version": 1,
            "sessionId": session,
            "host": host,
            "dockerHost": hosts.urls[host],
        }


def test_re_running_moves_nothing(hosts: TwoHosts) -> None:
    before = {s: m["container"]["id"] for s, m in hosts.manifests().items()}
    placed = {s: hosts.host_of(s) for s in before}
    # Make the other host look emptier: placement must still keep what is placed.
    hosts.up(ENVIRONMENTS, quotas={"environments": 500, "hosts": {"two": {"environments": 499}}})
    after = {s: m["container"]["id"] for s, m in hosts.manifests().items()}
    assert after == before
    assert {s: hosts.host_of(s) for s in before} == placed


def test_a_full_host_gets_nothing_new_and_no_room_creates_nothing(hosts: TwoHosts) -> None:
    on_two = sum(1 for s in hosts.manifests() if hosts.host_of(s) == "two")
    quotas = {"environments": 500, "hosts": {"two": {"environments": on_two}}}
    hosts.up([*ENVIRONMENTS, {"sessionId": "placed-c"}], quotas=quotas)
    assert hosts.host_of("placed-c") == "one"
    full = {"environments": 0, "hosts": {"one": {"environments": 0}, "two": {"environments": 0}}}
    before = sorted(hosts.leftovers())
    with pytest.raises(pulumi.RunError, match="no Docker host has quota headroom"):
        run_program(
            hosts.mocks(),
            {
                "cwd": str(hosts.cwd),
                "image": {"ref": hosts.image},
                "dockerHosts": hosts.urls,
                "quotas": full,
                "environments": [{"sessionId": "overflow"}],
            },
            stack=f"{STACK}x",
        )
    assert sorted(hosts.leftovers()) == before


def test_the_inventory_groups_environments_by_host_and_reaches_them(hosts: TwoHosts) -> None:
    manifests = hosts.cwd / ".companion" / "cloud" / "environments"
    inventory = manifest_inventory(hosts.cwd / "fleet.dockyard_manifests.yml", manifests)
    listing = list_inventory(inventory)
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    names = {s: m["container"]["name"] for s, m in hosts.manifests().items()}
    for host in ("one", "two"):
        expected = sorted(names[s] for s in names if hosts.host_of(s) == host)
        assert sorted(data[f"host_{host}"]["hosts"]) == expected
    hostvars = data["_meta"]["hostvars"][names["pinned-two"]]
    extra = hostvars["ansible_docker_extra_args"]
    extra = extra.get("__ansible_unsafe", extra) if isinstance(extra, dict) else extra
    assert extra == f"-H {hosts.urls['two']}"
    # Reached through that engine: a raw command in the container on the second engine.
    result = subprocess.run(
        [
            str(VENV_BIN / "ansible"),
            "-i",
            str(inventory),
            names["pinned-two"],
            "-m",
            "raw",
            "-a",
            "hostname",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pinned-two" in result.stdout


def test_teardown_leaves_nothing_on_either_engine(hosts: TwoHosts) -> None:
    sessions = list(hosts.manifests())
    hosts.mocks().destroy()
    assert hosts.leftovers() == []
    written = hosts.cwd / ".companion" / "cloud" / "environments"
    assert [p.name for p in written.iterdir()] == []
    assert sessions
