"""Published ports are not a side door (issue 20, docs/access.md).

Two stacks on the real engine: ``ports`` with the default ``publishAddress`` (environment
``a`` without ports, ``b`` publishing 8000) and ``wide`` with ``publishAddress: 0.0.0.0``
(``c`` publishing 8000), the old behaviour, as the control that shows what loopback
publishing closes. Then the egress guard's host fence (roles/egress_guard), run in a
table of this test's own and scoped to this test's networks by label, so nobody else's
environment on the shared engine is touched: ``a`` loses the host and link-local
(169.254.0.0/16, served here by a network namespace this test creates), the host keeps
its published ports, and ``--remove`` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from docker.models.containers import Container

from tests.support.ansible import REPO
from tests.support.engine import RUN_ID, connects, exec_ok, wait_for
from tests.support.stacks import Deployed

pytestmark = [pytest.mark.docker, pytest.mark.slow]

GUARD = REPO / "roles" / "egress_guard" / "files" / "dockyard-egress-guard.py"
SCOPE_KEY = "it.access"
SCOPE = f"{SCOPE_KEY}={RUN_ID}"
TABLE = f"dockyard_t{RUN_ID[:8]}"
# Link-local, like a cloud's metadata service at 169.254.169.254; a /24 of our own.
LINK_SUBNET = "169.254.213"
LINK_HOST_IP, LINK_SERVER_IP = f"{LINK_SUBNET}.1", f"{LINK_SUBNET}.2"
INNER_PORT = 8000

# Run in environment a: try each host:port, print {"host:port": connected?}.
REACH = r"""
import json, socket, sys
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    s = socket.socket(); s.settimeout(2)
    out[target] = s.connect_ex((host, int(port))) == 0
    s.close()
print(json.dumps(out))
"""
HTTP = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"metadata")
    def log_message(self, *a): pass
http.server.HTTPServer((sys.argv[1], 80), H).serve_forever()
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


@dataclass
class Envs:
    ports: Deployed
    wide: Deployed

    def host_port(self, stack: Deployed, session: str) -> int:
        (mapping,) = stack.manifests[session]["container"]["portMappings"]
        assert mapping["containerPort"] == INNER_PORT
        return int(mapping["hostPort"])

    def address(self, stack: Deployed, session: str) -> str:
        container = stack.container(session)
        container.reload()
        (network,) = container.attrs["NetworkSettings"]["Networks"].values()
        return str(network["IPAddress"])

    def gateway(self, stack: Deployed, session: str) -> str:
        container = stack.container(session)
        container.reload()
        (network,) = container.attrs["NetworkSettings"]["Networks"].values()
        return str(network["Gateway"])


def serve(container: Container) -> None:
    """A dev server inside the environment, as the agent would start one."""
    container.exec_run(
        ["python3", "-m", "http.server", str(INNER_PORT), "--bind", "0.0.0.0"],
        user="1000:1000",
        detach=True,
    )


def host_get(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        return int(response.status)


def reach(container: Container, *targets: str) -> dict[str, bool]:
    return json.loads(exec_ok(container, ["python3", "-c", REACH, *targets], user="1000:1000"))


def host_addresses() -> list[str]:
    """Every IPv4 address of the host outside loopback (its interfaces and bridges)."""
    found = []
    for line in sh("ip", "-4", "-o", "addr", "show").stdout.splitlines():
        address = line.split()[3].split("/")[0]
        if not ipaddress.IPv4Address(address).is_loopback:
            found.append(address)
    return found


@pytest.fixture(scope="module")
def envs(deploy: Any) -> Envs:
    labels = {SCOPE_KEY: RUN_ID}
    limits = {"cpus": 1, "memory": "512m"}
    ports = deploy(
        "ports",
        {
            "limits": limits,
            "environments": [
                {"sessionId": "a", "labels": labels},
                {"sessionId": "b", "labels": labels, "ports": [INNER_PORT]},
            ],
        },
    )
    wide = deploy(
        "wide",
        {
            "limits": limits,
            "publishAddress": "0.0.0.0",
            "environments": [{"sessionId": "c", "labels": labels, "ports": [INNER_PORT]}],
        },
    )
    ports.wait_ready()
    wide.wait_ready()
    found = Envs(ports, wide)
    serve(ports.container("b"))
    serve(wide.container("c"))
    for stack, session in ((ports, "b"), (wide, "c")):
        port = found.host_port(stack, session)
        wait_for(lambda p=port: _answers(p), 60, interval=0.2, what=f"server on {port}")
    return found


def _answers(port: int) -> bool:
    try:
        return host_get(port) == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def link_local() -> Iterator[str]:
    """A namespace answering HTTP on a link-local address, routed from the host."""
    ns, host_if, ns_if = f"dyac-{RUN_ID[:6]}", f"dyac{RUN_ID[:4]}h", f"dyac{RUN_ID[:4]}n"
    server: subprocess.Popen[bytes] | None = None
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", ns)
        sh("ip", "addr", "add", f"{LINK_HOST_IP}/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{LINK_SERVER_IP}/24", "dev", ns_if)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        server = process = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", HTTP, LINK_SERVER_IP]
        )
        # Listening, not a fixed pause: a loaded host can take seconds to start Python, and
        # the fence test's control (reached before the fence) needs the server up.
        wait_for(
            lambda: process.poll() is None and connects(LINK_SERVER_IP, 80),
            60,
            interval=0.1,
            what=lambda: f"the link-local server on {LINK_SERVER_IP}:80 (exit {process.poll()})",
        )
        yield LINK_SERVER_IP
    finally:
        if server is not None:
            server.kill()
            server.wait()
        sh("ip", "link", "del", host_if, check=False)
        sh("ip", "netns", "del", ns, check=False)


def guard(*args: str, state_dir: str) -> dict[str, Any]:
    result = sh(
        sys.executable, str(GUARD), "--table", TABLE, "--scope-label", SCOPE,
        "--state-dir", state_dir, "--upstream", "192.0.2.53", "--json", *args,
    )  # fmt: skip
    return json.loads(result.stdout)


@pytest.fixture
def fenced(envs: Envs, tmp_path: Any) -> Iterator[dict[str, Any]]:
    """The host fence for this test's networks only, in a table of its own; removed after."""
    state_dir = str(tmp_path / "guard")
    try:
        first = guard(state_dir=state_dir)
        second = guard(state_dir=state_dir)
        yield {"first": first, "second": second, "state_dir": state_dir}
    finally:
        sh(sys.executable, str(GUARD), "--table", TABLE, "--state-dir", state_dir, "--remove",
           check=False)  # fmt: skip
        sh("nft", "delete", "table", "inet", TABLE, check=False)


def test_ports_bind_to_loopback_unless_the_stack_says(envs: Envs) -> None:
    for stack, session, expected in ((envs.ports, "b", "127.0.0.1"), (envs.wide, "c", "0.0.0.0")):
        container = stack.container(session)
        bindings = container.attrs["HostConfig"]["PortBindings"][f"{INNER_PORT}/tcp"]
        assert [b["HostIp"] for b in bindings] == [expected]


def test_host_reaches_the_published_port(envs: Envs) -> None:
    assert host_get(envs.host_port(envs.ports, "b")) == 200


def test_a_neighbour_reaches_no_published_port(envs: Envs) -> None:
    """By A's gateway, every host address, B's own address (container and host port)."""
    port = envs.host_port(envs.ports, "b")
    b_address = envs.address(envs.ports, "b")
    targets = [
        f"{envs.gateway(envs.ports, 'a')}:{port}",
        *(f"{address}:{port}" for address in host_addresses()),
        f"{b_address}:{port}",
        f"{b_address}:{INNER_PORT}",
    ]
    results = reach(envs.ports.container("a"), *targets)
    assert [target for target, connected in results.items() if connected] == []


def test_control_without_loopback_publishing_the_gateway_is_a_side_door(envs: Envs) -> None:
    """What loopback publishing closes: a port published on 0.0.0.0 is reached by another
    environment through its own gateway (Docker's proxy listens on every host address)."""
    port = envs.host_port(envs.wide, "c")
    results = reach(envs.ports.container("a"), f"{envs.gateway(envs.ports, 'a')}:{port}")
    assert list(results.values()) == [True]


def test_fence_covers_only_this_tests_networks_and_is_idempotent(
    envs: Envs, fenced: dict[str, Any], docker_client: Any
) -> None:
    assert fenced["first"]["changed"] is True
    assert fenced["second"]["changed"] is False
    table = sh("nft", "list", "table", "inet", TABLE).stdout
    ours = {
        f"br-{network.id[:12]}" for network in docker_client.networks.list(filters={"label": SCOPE})
    }
    assert len(ours) == 3  # a, b and c: one network per environment
    mentioned = {word.strip('"') for word in table.split() if word.startswith('"br-')}
    assert mentioned == ours


def test_fence_keeps_environments_off_the_host_and_link_local(envs: Envs, link_local: str) -> None:
    a = envs.ports.container("a")
    wide_port = envs.host_port(envs.wide, "c")
    gateway = envs.gateway(envs.ports, "a")
    with socket.create_server(("0.0.0.0", 0)) as server:
        host_port = server.getsockname()[1]
        targets = [f"{gateway}:{host_port}", f"{link_local}:80", f"{gateway}:{wide_port}"]
        before = reach(a, *targets)
        # Controls: without the fence, each of these is reached.
        assert before == dict.fromkeys(targets, True)
        state_dir = f"/tmp/dockyard-fence-{RUN_ID}"
        try:
            guard(state_dir=state_dir)
            after = reach(a, *targets)
            # The host still reaches every published port and the server it runs.
            assert host_get(envs.host_port(envs.ports, "b")) == 200
            assert host_get(wide_port) == 200
        finally:
            sh(sys.executable, str(GUARD), "--table", TABLE, "--state-dir", state_dir,
               "--remove", check=False)  # fmt: skip
            sh("nft", "delete", "table", "inet", TABLE, check=False)
    assert after == dict.fromkeys(targets, False)
    assert sh("nft", "list", "table", "inet", TABLE, check=False).returncode != 0
    # Removed, the fence is gone: the host's server is reached again.
    with socket.create_server(("0.0.0.0", 0)) as server:
        again = f"{gateway}:{server.getsockname()[1]}"
        assert reach(a, again) == {again: True}


def test_a_listed_exception_passes_the_fence(envs: Envs, tmp_path: Any) -> None:
    a = envs.ports.container("a")
    gateway = envs.gateway(envs.ports, "a")
    with (
        socket.create_server(("0.0.0.0", 0)) as allowed,
        socket.create_server(("0.0.0.0", 0)) as other,
    ):
        allowed_target = f"{gateway}:{allowed.getsockname()[1]}"
        other_target = f"{gateway}:{other.getsockname()[1]}"
        state_dir = str(tmp_path / "guard")
        try:
            guard(f"--host-exception=gateway:{allowed.getsockname()[1]}", state_dir=state_dir)
            results = reach(a, allowed_target, other_target)
        finally:
            guard("--remove", state_dir=state_dir)
            sh("nft", "delete", "table", "inet", TABLE, check=False)
    assert results == {allowed_target: True, other_target: False}


def test_remove_leaves_no_table(envs: Envs, tmp_path: Any) -> None:
    state_dir = str(tmp_path / "guard")
    guard(state_dir=state_dir)
    assert sh("nft", "list", "table", "inet", TABLE, check=False).returncode == 0
    removed = guard("--remove", state_dir=state_dir)
    assert removed["actions"] == ["nftables table deleted"]
    assert sh("nft", "list", "table", "inet", TABLE, check=False).returncode != 0
    with contextlib.suppress(FileNotFoundError):
        assert list((tmp_path / "guard").iterdir()) == []
