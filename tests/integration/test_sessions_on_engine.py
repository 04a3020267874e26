"""Sessions on the real engine, through the installed ``dockyard`` command.

Each call is a separate process, as an application's would be, with the harness driver
(``tests.harness.sessions:HarnessDriver``) standing in for the Pulumi CLI: the same plan
and program, realised on this engine. One tenant per test run scopes everything the
module creates (its stack label), and teardown removes it even when a test failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from dockyard import manifest as contract
from tests.support.cli import DOCKYARD
from tests.support.cli import Cli as SupportCli
from tests.support.engine import RUN_ID, is_ready, remove_volume, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TENANT = f"t{RUN_ID[:8]}"


@dataclass
class Cli(SupportCli):
    settings: Path
    state: Path

    def up(self, session: str, *extra: str) -> subprocess.Popen[str]:
        return self.start(
            "up", "--json", "-s", session, "--tenant", TENANT, "--cwd", str(self.project), *extra
        )


def _sweep(client: docker.DockerClient) -> None:
    selector = {"label": f"dockyard.stack={TENANT}"}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=selector):
        network.remove()
    for volume in client.volumes.list(filters=selector):
        remove_volume(volume)


def _leftovers(client: docker.DockerClient, session: str) -> list[str]:
    selector = {"label": [f"dockyard.stack={TENANT}", f"dockyard.session={session}"]}
    return [
        *(f"container {c.name}" for c in client.containers.list(all=True, filters=selector)),
        *(f"network {n.name}" for n in client.networks.list(filters=selector)),
        *(f"volume {v.name}" for v in client.volumes.list(filters=selector)),
    ]


@pytest.fixture(scope="module")
def cli(
    docker_client: docker.DockerClient, core_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cli]:
    assert DOCKYARD.is_file(), f"the dockyard console script is not installed at {DOCKYARD}"
    base = tmp_path_factory.mktemp("sessions")
    state, project = base / "state", base / "project"
    state.mkdir()
    project.mkdir()
    # The host's image, as `dockyard image build` records it (tested on its own below).
    (state / "image.json").write_text(json.dumps({"imageRef": core_image}))
    settings = base / "settings.yaml"
    settings.write_text(json.dumps({"healthcheck": {"interval": "5s"}}))
    env = {
        **os.environ,
        "DOCKYARD_STATE_DIR": str(state),
        "DOCKYARD_CONFIG": str(settings),
        "DOCKYARD_DRIVER": "tests.harness.sessions:HarnessDriver",
        "PYTHONPATH": str(REPO),
        "GITHUB_ACTOR": "",
    }
    env.pop("GITHUB_ACTOR")
    try:
        yield Cli(env, project, settings, state)
    finally:
        _sweep(docker_client)


def _finish(process: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_ten_sessions_created_at_once(cli: Cli, docker_client: docker.DockerClient) -> None:
    started = time.monotonic()
    processes = {f"p{i}": cli.up(f"p{i}", "-p", "3000", "-p", "8080") for i in range(10)}
    results = {session: _finish(p) for session, p in processes.items()}
    elapsed = time.monotonic() - started
    failed = {s: r for s, r in results.items() if r[0] != 0}
    assert failed == {}, failed
    manifests = {s: json.loads(r[1]) for s, r in results.items()}
    host_ports = []
    for session, manifest in manifests.items():
        contract.validate(manifest, session)
        assert manifest["sessionId"] == session
        host_ports += [p["hostPort"] for p in manifest["container"]["portMappings"]]
        written = cli.project / ".companion" / "cloud" / "environments" / TENANT / f"{session}.json"
        assert json.loads(written.read_text()) == manifest
        container = docker_client.containers.get(manifest["container"]["id"])
        assert container.labels["dockyard.tenant"] == TENANT
    # Distinct on the engine, not by the program's say-so: read back from inspect.
    engine_ports = [
        int(binding[0]["HostPort"])
        for m in manifests.values()
        for binding in docker_client.api.inspect_container(m["container"]["id"])["NetworkSettings"][
            "Ports"
        ].values()
        if binding
    ]
    assert sorted(engine_ports) == sorted(host_ports)
    assert len(set(engine_ports)) == 20
    for manifest in manifests.values():
        container = docker_client.containers.get(manifest["container"]["id"])
        wait_for(lambda c=container: is_ready(c), 90, what=f"{manifest['sessionId']} ready")
    rows = cli.json("ls", "--tenant", TENANT)
    assert sorted(r["sessionId"] for r in rows) == sorted(manifests)
    creates = [e for e in cli.json("audit", "--tenant", TENANT) if e["action"] == "create"]
    assert sorted(e["session"] for e in creates) == sorted(manifests)
    assert {e["result"] for e in creates} == {"ok"}
    print(f"\n10 sessions created at once by 10 processes: {elapsed:.1f} s")


def test_up_of_an_existing_session_converges(cli: Cli) -> None:
    before = cli.json("show", "p0", "--tenant", TENANT)
    code, out, err = _finish(cli.up("p0", "-p", "3000", "-p", "8080"))
    assert code == 0, err
    after = json.loads(out)
    assert after["container"]["id"] == before["container"]["id"]
    assert after["container"]["portMappings"] == before["container"]["portMappings"]


def test_quota_is_checked_before_anything_is_created(
    cli: Cli, docker_client: docker.DockerClient
) -> None:
    cli.settings.write_text(
        json.dumps(
            {
                "healthcheck": {"interval": "5s"},
                "quotas": {"tenants": {TENANT: {"environments": 10}}},
            }
        )
    )
    try:
        code, out, err = _finish(cli.up("p10"))
        assert code == 3, (out, err)
        message = json.loads(out)["error"]["problems"][0]
        assert message == (
            f"quota: tenant {TENANT} on host local allows environments 10; 10 in use, "
            "session p10 asks 1 more"
        )
        assert _leftovers(docker_client, "p10") == []
        assert not (
            cli.project / ".companion" / "cloud" / "environments" / TENANT / "p10.json"
        ).exists()
    finally:
        cli.settings.write_text(json.dumps({"healthcheck": {"interval": "5s"}}))


def test_a_destroy_during_another_create_disturbs_nothing(
    cli: Cli, docker_client: docker.DockerClient
) -> None:
    creating = cli.up("p20", "-p", "3000")
    destroyed = cli.run("down", "p1", "--tenant", TENANT, "--json")
    code, out, err = _finish(creating)
    assert destroyed.returncode == 0, destroyed.stderr
    assert code == 0, err
    assert _leftovers(docker_client, "p1") == []
    container = docker_client.containers.get(json.loads(out)["container"]["id"])
    wait_for(lambda: is_ready(container), 90, what="p20 ready")


def test_refresh_recreates_and_keeps_the_workspace(
    cli: Cli, docker_client: docker.DockerClient
) -> None:
    before = cli.json("show", "p2", "--tenant", TENANT)
    old = docker_client.containers.get(before["container"]["id"])
    wait_for(lambda: is_ready(old), 90, what="p2 ready")
    assert old.exec_run(["sh", "-c", "echo kept > /workspace/note"]).exit_code == 0
    after = cli.json("refresh", "p2", "--tenant", TENANT)
    assert after["container"]["id"] != before["container"]["id"]
    new = docker_client.containers.get(after["container"]["id"])
    wait_for(lambda: is_ready(new), 90, what="p2 ready again")
    assert new.exec_run(["cat", "/workspace/note"]).output == b"kept\n"
    assert cli.json("show", "p2", "--tenant", TENANT) == after


def test_host_tools_refuse_a_manifest_the_engine_contradicts(cli: Cli) -> None:
    """An agent that can write the project directory could point its manifest at another
    session's container or ports; attach, ssh and logs check the engine first."""
    target = cli.project / ".companion" / "cloud" / "environments" / TENANT / "p3.json"
    honest = target.read_text()
    other = cli.json("show", "p4", "--tenant", TENANT)
    forged = {**json.loads(honest), "container": other["container"]}
    tools = {
        "logs": ("logs", "p3", "--tenant", TENANT, "--tail", "1"),
        "attach": ("attach", "p3", "--tenant", TENANT),
        "ssh": ("ssh", "p3", "--tenant", TENANT, "--print"),
    }
    try:
        target.write_text(json.dumps(forged))
        for tool, argv in tools.items():
            result = cli.run(*argv, timeout=60)
            assert result.returncode == 1, (tool, result.stdout, result.stderr)
            assert "does not match the engine" in result.stderr, (tool, result.stderr)
            assert "container id is not the engine's" in result.stderr, (tool, result.stderr)
            assert "Traceback" not in result.stderr
    finally:
        target.write_text(honest)
    assert cli.run(*tools["logs"], timeout=60).returncode == 0


def test_a_failed_create_leaves_nothing_and_says_why(
    cli: Cli, docker_client: docker.DockerClient
) -> None:
    # A GPU request passes the configuration, but an engine without a GPU driver refuses
    # it only when the container starts: the network and volumes exist by then and must
    # go again.
    if "nvidia" in (docker_client.info().get("Runtimes") or {}):
        pytest.skip("this engine has a GPU runtime: the GPU request would not fail")
    image = json.loads((cli.state / "image.json").read_text())["imageRef"]
    request = {
        "sessionId": "broken",
        "cwd": str(cli.project),
        "tenant": TENANT,
        "profile": "gpu",
        "gpu": "all",
        "container": {"image": image},
    }
    result = cli.run("up", "--json", "--request", "-", stdin=json.dumps(request))
    assert result.returncode == 1, (result.stdout, result.stderr)
    # The reason, in the error object --json prints (docs/sessions.md), from the driver.
    (problem,) = json.loads(result.stdout)["error"]["problems"]
    assert problem.startswith(f"create of stack {TENANT}.broken failed: "), problem
    assert "gpu" in problem.lower()
    assert _leftovers(docker_client, "broken") == []
    assert all(r["sessionId"] != "broken" for r in cli.json("ls"))
    (entry,) = cli.json("audit", "--session", "broken")
    assert (entry["action"], entry["result"]) == ("create", "error")


def test_a_bad_request_lists_every_problem_and_creates_nothing(cli: Cli) -> None:
    request = {
        "sessionId": "bad one",
        "cwd": "relative",
        "container": {"ports": [0], "env": {"GITHUB_TOKEN": "ghp_x"}},
    }
    result = cli.run("validate", "--json", "--request", "-", stdin=json.dumps(request))
    assert result.returncode == 2
    problems = json.loads(result.stdout)["error"]["problems"]
    keys = sorted(p.split(": ", 1)[0] for p in problems)
    assert keys == sorted(
        [
            "request.cwd",
            "request.container.ports[0]",
            "request.container.env.GITHUB_TOKEN",
            "request.sessionId",
        ]
    )
    assert "ghp_x" not in result.stdout + result.stderr


def test_down_removes_every_session(cli: Cli, docker_client: docker.DockerClient) -> None:
    sessions = [row["sessionId"] for row in cli.json("ls", "--tenant", TENANT)]
    processes = [cli.start("down", s, "--tenant", TENANT) for s in sessions]
    assert [_finish(p)[0] for p in processes] == [0] * len(processes)
    assert cli.json("ls", "--tenant", TENANT) == []
    for session in sessions:
        assert _leftovers(docker_client, session) == []
        assert not (
            cli.project / ".companion" / "cloud" / "environments" / TENANT / f"{session}.json"
        ).exists()
    missing = cli.run("show", "p0", "--tenant", TENANT, "--json")
    assert missing.returncode == 4
    assert list((cli.state / "harness").glob(f"{TENANT}.*.json")) == []


def test_image_build_is_recorded_and_reused(cli: Cli) -> None:
    result = cli.json("image", "build")
    assert result["imageRef"].startswith("dockyard-core:host-")
    assert json.loads((cli.state / "image.json").read_text()) == result
    again = cli.json("image", "build")
    assert again == result
