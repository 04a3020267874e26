"""`dockyard ssh SESSION` end to end on the real engine (issue 20, docs/access.md): a
session with ``ssh: true`` created by `dockyard up` (the harness driver), a certificate
issued for the caller's key and recorded in the audit trail, the command run over SSH,
remote and dynamic forwarding through the same command. Everything it creates carries
its own tenant and is removed after."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import time
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
TENANT = f"ssh{RUN_ID[:8]}"
SESSION = "shell"
SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]


@dataclass
class Cli(SupportCli):
    state: Path
    key: Path

    timeout: ClassVar[float] = 240

    def ssh(self, *extra: str, command: str | None = None) -> list[str]:
        return [
            str(DOCKYARD), "ssh", SESSION, "--tenant", TENANT, "-i", str(self.key),
            "--minutes", "5", *(["--command", command] if command else []), "--",
            *SSH_OPTIONS, *extra,
        ]  # fmt: skip


def _sweep(client: docker.DockerClient) -> None:
    selector = {"label": f"dockyard.stack={TENANT}"}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=selector):
        network.remove()
    for volume in client.volumes.list(filters=selector):
        remove_volume(volume)


@pytest.fixture(scope="module")
def cli(
    docker_client: docker.DockerClient, core_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cli]:
    assert DOCKYARD.is_file(), f"the dockyard console script is not installed at {DOCKYARD}"
    base = tmp_path_factory.mktemp("ssh-cli")
    state, project = base / "state", base / "project"
    state.mkdir()
    project.mkdir()
    (state / "image.json").write_text(json.dumps({"imageRef": core_image}))
    settings = base / "settings.yaml"
    settings.write_text(json.dumps({"healthcheck": {"interval": "5s"}}))
    key = base / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = {
        **{k: v for k, v in os.environ.items() if k != "GITHUB_ACTOR"},
        "DOCKYARD_STATE_DIR": str(state),
        "DOCKYARD_CONFIG": str(settings),
        "DOCKYARD_DRIVER": "tests.harness.sessions:HarnessDriver",
        "DOCKYARD_SSH_DIR": str(base / "ca"),
        "PYTHONPATH": str(REPO),
    }
    found = Cli(env, None, state, key)
    try:
        request = {"sessionId": SESSION, "cwd": str(project), "ssh": True}
        result = found.run(
            "up", "--request", "-", "--tenant", TENANT, "--json", stdin=json.dumps(request)
        )
        assert result.returncode == 0, result.stderr
        # `up` returns once the container runs; sshd starts in its entrypoint, before the
        # ready marker: the first `dockyard ssh` must not race it.
        container = _container(docker_client)
        wait_for(lambda: is_ready(container), 120, what=f"{SESSION} ready (sshd started)")
        yield found
    finally:
        found.run("down", SESSION, "--tenant", TENANT)
        _sweep(docker_client)


def test_ssh_runs_a_command_and_is_audited(cli: Cli) -> None:
    result = subprocess.run(
        cli.ssh(command="id -un; hostname"), capture_output=True, text=True, timeout=60, env=cli.env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["agent", SESSION]
    entries = [json.loads(line) for line in (cli.state / "audit.jsonl").read_text().splitlines()]
    (issued,) = [e for e in entries if e["action"] == "ssh-certificate"]
    assert issued["result"] == "ok"
    assert issued["session"] == SESSION
    assert issued["detail"] == (
        f"key id dockyard:{TENANT}/{SESSION}:{issued['actor']}, principal agent@{SESSION}, 5 min"
    )


def test_lifetime_above_the_bound_is_refused(cli: Cli) -> None:
    argv = cli.ssh(command="true")
    argv[argv.index("--minutes") + 1] = "60"
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=cli.env)
    assert result.returncode != 0
    assert "--minutes 60 is not allowed (allowed: 1-15)" in result.stderr


def test_remote_forwarding_reaches_the_caller(cli: Cli) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        server.settimeout(30)
        # From inside the environment, its port 7000 is the caller's server.
        script = (
            "import socket,time\n"
            "for _ in range(50):\n"
            "    try:\n"
            "        s = socket.create_connection(('127.0.0.1', 7000), 2); s.sendall(b'hello'); break\n"
            "    except OSError: time.sleep(0.2)\n"
        )
        tunnel = subprocess.Popen(
            cli.ssh("-R", f"7000:127.0.0.1:{port}", command=f'python3 -c "{script}"'),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=cli.env,
        )
        try:
            connection, _ = server.accept()
            with connection:
                connection.settimeout(10)
                assert connection.recv(5) == b"hello"
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                tunnel.wait(timeout=20)
            tunnel.kill()


def test_dynamic_forwarding_reaches_a_server_inside(
    cli: Cli, docker_client: docker.DockerClient
) -> None:
    container = docker_client.containers.list(
        filters={"label": [f"dockyard.stack={TENANT}", f"dockyard.session={SESSION}"]}
    )[0]
    container.exec_run(
        ["python3", "-m", "http.server", "9100", "--bind", "127.0.0.1"],
        user="1000:1000",
        detach=True,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        socks = probe.getsockname()[1]
    tunnel = subprocess.Popen(
        cli.ssh("-N", "-D", f"127.0.0.1:{socks}", "-o", "ExitOnForwardFailure=yes"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=cli.env,
    )
    try:
        wait_for(lambda: _socks_get(socks, 9100) == 200, 30, interval=0.5, what="SOCKS tunnel")
    finally:
        tunnel.terminate()
        tunnel.wait(timeout=10)


def _socks_get(socks: int, port: int) -> int:
    """One HTTP GET to 127.0.0.1:port *inside* the environment, through SOCKS5."""
    try:
        with socket.create_connection(("127.0.0.1", socks), 3) as s:
            s.settimeout(5)
            s.sendall(b"\x05\x01\x00")
            if s.recv(2) != b"\x05\x00":
                return 0
            s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", port))
            if s.recv(10)[1] != 0:
                return 0
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            time.sleep(0.2)
            return int(s.recv(64).split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _container(client: docker.DockerClient) -> Any:
    (found,) = client.containers.list(
        filters={"label": [f"dockyard.stack={TENANT}", f"dockyard.session={SESSION}"]}
    )
    return found


def test_host_key_survives_recreation(cli: Cli, docker_client: docker.DockerClient) -> None:
    key = ["cat", "/config/ssh/ssh_host_ed25519_key.pub"]
    before = _container(docker_client)
    host_key = before.exec_run(key).output
    result = cli.run("refresh", SESSION, "--tenant", TENANT, "--json")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: _container(docker_client).id != before.id, 60, interval=0.5, what="recreation")
    after = _container(docker_client)
    # The host key is in the config volume, there at once; sshd listens only once the new
    # entrypoint started it, before its ready marker.
    wait_for(lambda: is_ready(after), 120, interval=0.5, what="sshd up (ready marker)")
    assert after.exec_run(key).output == host_key
    again = subprocess.run(
        cli.ssh(command="id -un"), capture_output=True, text=True, timeout=60, env=cli.env
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "agent"
