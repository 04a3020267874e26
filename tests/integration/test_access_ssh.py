"""SSH into an environment with short-lived certificates (issue 20, docs/access.md), on
the real engine: one stack with ``web`` (``ssh: true``) and ``plain`` (no ssh). The
stack's CA lives in a temporary ``DOCKYARD_SSH_DIR``; every key and certificate is this
test's own; the stack is torn down by the ``deploy`` fixture."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockyard import ssh
from tests.support.engine import exec_ok, wait_for
from tests.support.stacks import Deployed

pytestmark = [pytest.mark.docker, pytest.mark.slow]

INNER_PORT = 9000


@pytest.fixture(scope="module")
def ssh_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("ssh-ca")
    before = os.environ.get(ssh.DIR_ENV)
    os.environ[ssh.DIR_ENV] = str(directory)
    try:
        yield directory
    finally:
        if before is None:
            os.environ.pop(ssh.DIR_ENV, None)
        else:
            os.environ[ssh.DIR_ENV] = before


@pytest.fixture(scope="module")
def stack(deploy: Any, ssh_dir: Path) -> Deployed:
    deployed = deploy(
        "ssh",
        {
            "limits": {"cpus": 1, "memory": "512m"},
            "environments": [{"sessionId": "web", "ssh": True}, {"sessionId": "plain"}],
        },
    )
    deployed.wait_ready()
    return deployed


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ssh-keys")
    for name in ("user", "other_ca"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / name)],
            check=True,
        )
    return directory


def port_of(stack: Deployed, session: str) -> int:
    return ssh.host_port(stack.manifests[session])


def connect(
    stack: Deployed, key: Path, cert: Path | None, *command: str, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    argv = [
        "ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
        *(["-o", f"CertificateFile={cert}"] if cert else ["-o", "CertificateFile=none"]),
        "-p", str(port_of(stack, "web")), "agent@127.0.0.1", *command,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def signed(keys: Path, stack: Deployed, name: str, **kwargs: Any) -> Path:
    """A copy of the user's key, signed as asked (each test its own certificate)."""
    for suffix in ("", ".pub"):
        (keys / f"{name}{suffix}").write_bytes((keys / f"user{suffix}").read_bytes())
    (keys / name).chmod(0o600)
    cert = ssh.issue(stack.stack, "web", keys / f"{name}.pub", caller="test", **kwargs)
    return cert.path


def test_ca_is_kept_private_on_the_host(stack: Deployed, ssh_dir: Path) -> None:
    directory = ssh_dir / stack.stack
    assert directory.stat().st_mode & 0o777 == 0o700
    assert (directory / ssh.CA_NAME).stat().st_mode & 0o777 == 0o600


def test_port_22_is_published_on_loopback_and_in_the_manifest(stack: Deployed) -> None:
    mappings = stack.manifests["web"]["container"]["portMappings"]
    assert [m["containerPort"] for m in mappings] == [22]
    container = stack.container("web")
    assert [b["HostIp"] for b in container.attrs["HostConfig"]["PortBindings"]["22/tcp"]] == [
        "127.0.0.1"
    ]
    assert stack.manifests["plain"]["container"]["portMappings"] == []


def test_a_fresh_certificate_connects_and_runs_a_command(stack: Deployed, keys: Path) -> None:
    cert = signed(keys, stack, "fresh", minutes=5)
    result = connect(stack, keys / "fresh", cert, "id -un; echo $PWD")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["agent", "/home/agent"]


@pytest.mark.parametrize(
    "case",
    ["expired", "other-ca", "other-principal", "other-session", "root", "bare-key"],
)
def test_refused(stack: Deployed, keys: Path, ssh_dir: Path, case: str) -> None:
    name = case.replace("-", "_")
    if case == "expired":
        cert: Path | None = signed(keys, stack, name, valid="-30m:-15m")
    elif case == "other-principal":
        cert = signed(keys, stack, name, principal_name="agent")
    elif case == "other-session":
        cert = signed(keys, stack, name, principal_name=ssh.principal("plain"))
    elif case == "root":
        cert = signed(keys, stack, name, principal_name="root")
    elif case == "other-ca":
        for suffix in ("", ".pub"):
            (keys / f"{name}{suffix}").write_bytes((keys / f"user{suffix}").read_bytes())
        (keys / name).chmod(0o600)
        subprocess.run(
            ["ssh-keygen", "-q", "-s", str(keys / "other_ca"), "-I", "x",
             "-n", ssh.principal("web"), "-V", "-1m:+5m", str(keys / f"{name}.pub")],
            check=True,
        )  # fmt: skip
        cert = keys / f"{name}-cert.pub"
    else:
        cert = None
    key = keys / (name if cert is not None else "user")
    result = connect(stack, key, cert, "true")
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def test_lifetime_is_bounded(stack: Deployed, keys: Path) -> None:
    with pytest.raises(ssh.SshError, match=r"--minutes 16 is not allowed \(allowed: 1-15\)"):
        signed(keys, stack, "long", minutes=16)
    cert = signed(keys, stack, "short", minutes=15)
    text = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(cert)], capture_output=True, text=True, check=True
    ).stdout
    assert f'Key ID: "dockyard:{stack.stack}/web:test"' in text
    assert ssh.principal("web") in text
    valid = text.split("Valid: from ", 1)[1].split("\n", 1)[0]
    start, end = (time.mktime(time.strptime(p, "%Y-%m-%dT%H:%M:%S")) for p in valid.split(" to "))
    assert end - start == 16 * 60  # 15 minutes, back-dated one for clock skew


def test_local_forwarding_reaches_a_server_inside(stack: Deployed, keys: Path) -> None:
    container = stack.container("web")
    container.exec_run(
        ["python3", "-m", "http.server", str(INNER_PORT), "--bind", "127.0.0.1"],
        user="1000:1000",
        detach=True,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()[1]
    cert = signed(keys, stack, "forward", minutes=5)
    argv = [
        "ssh",
        "-i",
        str(keys / "forward"),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        f"CertificateFile={cert}",
        "-o",
        "ExitOnForwardFailure=yes",
        "-N",
        "-L",
        f"127.0.0.1:{local}:127.0.0.1:{INNER_PORT}",
        "-p",
        str(port_of(stack, "web")),
        "agent@127.0.0.1",
    ]  # fmt: skip
    tunnel = subprocess.Popen(argv)
    try:

        def through() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=3) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(through, 60, interval=0.3, what=f"the tunnel on {local}")
    finally:
        tunnel.terminate()
        tunnel.wait(timeout=10)


def test_sshd_runs_as_the_agent_and_only_where_asked(stack: Deployed) -> None:
    users = exec_ok(stack.container("web"), ["ps", "-o", "user=", "-C", "sshd"]).split()
    assert users
    assert set(users) == {"agent"}
    plain = stack.container("plain").exec_run(["ps", "-o", "user=", "-C", "sshd"])
    assert plain.exit_code != 0
    assert plain.output.strip() == b""
    # Nothing listens on port 22 (0x0016) in the environment without ssh.
    tcp = exec_ok(stack.container("plain"), ["cat", "/proc/net/tcp"])
    assert ":0016 " not in tcp


def test_host_keys_live_in_the_config_volume(stack: Deployed) -> None:
    listing = exec_ok(stack.container("web"), ["ls", "/config/ssh"]).split()
    assert {"ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "principals"} <= set(listing)
