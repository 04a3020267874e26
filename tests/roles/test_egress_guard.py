"""playbooks/egress.yml (role egress_guard) on this machine, against environments realised
from a stack: one `egress: allowlist`, one `open`. Everything outside the environments
is a network namespace this test creates — an "allowed" and a "blocked" HTTP server and
an upstream resolver that knows the test names — so no packet leaves the machine.

What must hold: allowed name resolves and connects; blocked name does not resolve; the
blocked server's IP is dropped; IPv6 is closed; DNS to any other resolver never reaches
it; the open environment is unaffected; root in the container cannot undo any of it;
the rules come back after a flush (the timer's re-run) and survive an engine restart;
a second role run changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from docker.models.containers import Container

from tests.support import dockerd
from tests.support.ansible import LOCAL, REPO, run_playbook
from tests.support.engine import RUN_ID, exec_ok
from tests.support.stacks import Deployed

pytestmark = [pytest.mark.docker, pytest.mark.slow]

GUARD = REPO / "roles" / "egress_guard" / "files" / "dockyard-egress-guard.py"
SUBNET = "10.213.77"
ALLOWED_IP, BLOCKED_IP, RESOLVER_IP = f"{SUBNET}.2", f"{SUBNET}.3", f"{SUBNET}.4"

HTTP = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(sys.argv[2].encode())
    def log_message(self, *a): pass
http.server.HTTPServer((sys.argv[1], 80), H).serve_forever()
"""

# Run inside the environments: resolve / fetch / raw DNS, each printing one word.
PROBE = r"""
import socket, struct, sys, urllib.request
what, target = sys.argv[1], sys.argv[2]
try:
    if what == "resolve":
        print(socket.gethostbyname(target))
    elif what == "get":
        print(urllib.request.urlopen(f"http://{target}/", timeout=3).read().decode())
    elif what == "dns":  # one A query straight to a resolver: print its rcode
        name = sys.argv[3]
        q = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"".join(
            bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0\0\1\0\1"
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
        s.sendto(q, (target, 53)); r = s.recv(512)
        print(f"rcode={r[3] & 15} answers={struct.unpack('>H', r[6:8])[0]}")
    elif what == "ipv6":
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.settimeout(3)
        s.connect((target, 80)); print("connected")
except Exception as exc:
    print(f"failed:{type(exc).__name__}")
"""


@dataclass
class Upstream:
    namespace: str
    host_if: str
    log: Path

    def queries(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """A namespace on a veth: two HTTP servers and a resolver for *.test names."""
    base = tmp_path_factory.mktemp("egress-upstream")
    ns, host_if, ns_if = f"dyeg-{RUN_ID[:6]}", f"dyeg{RUN_ID[:4]}h", f"dyeg{RUN_ID[:4]}n"
    pid_file, log = base / "dnsmasq.pid", base / "upstream.log"
    servers: list[subprocess.Popen[bytes]] = []
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", ns)
        sh("ip", "addr", "add", f"{SUBNET}.1/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        for address in (ALLOWED_IP, BLOCKED_IP, RESOLVER_IP):
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", ns_if)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        for address, body in ((ALLOWED_IP, "allowed-server"), (BLOCKED_IP, "blocked-server")):
            servers.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", ns, sys.executable, "-c", HTTP, address, body]
                )
            )
        sh(
            "ip", "netns", "exec", ns, "dnsmasq", "--no-resolv", "--no-hosts",
            f"--listen-address={RESOLVER_IP}", "--bind-interfaces",
            f"--address=/allowed.test/{ALLOWED_IP}", f"--address=/blocked.test/{BLOCKED_IP}",
            "--log-queries", f"--log-facility={log}", f"--pid-file={pid_file}",
        )  # fmt: skip
        yield Upstream(ns, host_if, log)
    finally:
        with contextlib.suppress(OSError, ValueError):
            sh("kill", pid_file.read_text().strip(), check=False)
        for server in servers:
            server.kill()
        sh("ip", "link", "del", host_if, check=False)
        sh("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def stack(deploy: Any, upstream: Upstream) -> Deployed:
    values = {
        "limits": {"cpus": 1, "memory": "512m"},
        "environments": [
            {"sessionId": "fenced", "egress": "allowlist", "egressAllow": ["allowed.test:80"]},
            {"sessionId": "open", "backend": "codex"},
        ],
    }
    deployed = deploy("egress", values)
    deployed.wait_ready()
    return deployed


@pytest.fixture(scope="module")
def guarded(
    stack: Deployed, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    """The role applied twice (second: changed=0); everything it set up removed after."""
    hosts = tmp_path_factory.mktemp("egress-hosts") / "hosts.ini"
    variables = " ".join(f"{k}={v}" for k, v in LOCAL.items())
    hosts.write_text(f"[docker_hosts]\nlocalhost ansible_connection=local {variables}\n")
    extra = {"egress_guard_upstream_dns": [RESOLVER_IP], "egress_guard_log_queries": True}
    try:
        first = run_playbook("egress.yml", inventory=hosts, extra_vars=extra)
        second = run_playbook("egress.yml", inventory=hosts, extra_vars=extra)
        yield {"first": first, "second": second}
    finally:
        sh(sys.executable, str(GUARD), "--remove", check=False)
        Path("/etc/cron.d/dockyard-egress-guard").unlink(missing_ok=True)


def probe(container: Container, *args: str, user: str = "1000:1000") -> str:
    return exec_ok(container, ["python3", "-c", PROBE, *args], user=user).strip()


def test_role_is_idempotent(guarded: dict) -> None:
    assert guarded["first"].changed()["localhost"] > 0
    assert guarded["second"].changed() == {"localhost": 0}, guarded["second"].output[-3000:]


def test_allowed_name_resolves_and_connects(stack: Deployed, guarded: dict) -> None:
    fenced = stack.container("fenced")
    assert probe(fenced, "resolve", "allowed.test") == ALLOWED_IP
    assert probe(fenced, "get", "allowed.test") == "allowed-server"


def test_blocked_name_ip_and_other_resolvers_are_refused(
    stack: Deployed, guarded: dict, upstream: Upstream
) -> None:
    fenced = stack.container("fenced")
    assert probe(fenced, "resolve", "blocked.test").startswith("failed:")
    assert probe(fenced, "get", BLOCKED_IP).startswith("failed:")
    # The allowed server, but a port the allowlist does not name (its resolver port 53
    # is on another address): dropped.
    assert probe(fenced, "get", f"{ALLOWED_IP}:8080").startswith("failed:")
    # Straight to another resolver: answered by the guard's forwarder instead (REFUSED),
    # and the real resolver never sees the name.
    assert probe(fenced, "dns", RESOLVER_IP, "blocked.test") == "rcode=5 answers=0"
    assert "blocked.test" not in upstream.queries()


def test_ipv6_is_closed(stack: Deployed, guarded: dict) -> None:
    fenced = stack.container("fenced")
    bridge = guarded_bridge(stack)
    link_local = sh("ip", "-6", "-o", "addr", "show", "dev", bridge).stdout.split()[3].split("/")[0]
    # The host's own end of the bridge, over IPv6: no way through.
    assert probe(fenced, "ipv6", f"{link_local}%eth0").startswith("failed:")
    table = sh("nft", "list", "table", "inet", "dockyard_egress").stdout
    assert f'iifname "{bridge}" meta nfproto ipv6 counter' in table
    # No NET_ADMIN: even root cannot switch IPv6 on in the container.
    result = fenced.exec_run(
        ["sh", "-c", "echo 0 > /proc/sys/net/ipv6/conf/all/disable_ipv6"], user="root"
    )
    assert result.exit_code != 0


def guarded_bridge(stack: Deployed) -> str:
    network = stack.client.networks.get(f"dockyard-{stack.stack}-fenced")
    return f"br-{network.id[:12]}"


def test_open_environment_is_unaffected(stack: Deployed, guarded: dict) -> None:
    open_env = stack.container("open")
    assert probe(open_env, "get", BLOCKED_IP) == "blocked-server"
    assert probe(open_env, "get", ALLOWED_IP) == "allowed-server"


def test_services_on_the_host_are_out_of_reach(stack: Deployed, guarded: dict) -> None:
    """A service of the Docker host itself, reached through each network's gateway."""
    with socket.create_server(("0.0.0.0", 0)) as server:
        port = server.getsockname()[1]
        reach = (
            "import socket, sys\n"
            "gw = [l.split()[2] for l in open('/proc/net/route') if l.split()[1] == '00000000'][0]\n"
            "ip = socket.inet_ntoa(bytes.fromhex(gw)[::-1])\n"
            f"s = socket.socket(); s.settimeout(3); print(s.connect_ex((ip, {port})))\n"
        )
        results = {
            session: exec_ok(stack.container(session), ["python3", "-c", reach]).strip()
            for session in ("open", "fenced")
        }
    # The host fence (egress_guard_host_fence, on by default) covers open environments too.
    assert results["open"] != "0"
    assert results["fenced"] != "0"


def test_root_in_the_container_cannot_undo_it(stack: Deployed, guarded: dict) -> None:
    fenced = stack.container("fenced")
    attempts = {
        "raw socket": "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)'",
        "interface down": (
            "python3 -c 'import fcntl, socket, struct; "
            'fcntl.ioctl(socket.socket(), 0x8914, struct.pack("16sH14s", b"eth0", 0, bytes(14)))\''
        ),
        "sysctl": "echo 0 > /proc/sys/net/ipv4/ip_forward",
    }
    for what, command in attempts.items():
        result = fenced.exec_run(["sh", "-c", command], user="root")
        assert result.exit_code != 0, f"root in the container could: {what}"
    assert fenced.attrs["HostConfig"]["CapAdd"] in (None, [])
    assert probe(fenced, "get", BLOCKED_IP, user="root").startswith("failed:")


def test_rules_return_after_a_flush(stack: Deployed, guarded: dict) -> None:
    fenced = stack.container("fenced")
    sh("nft", "delete", "table", "inet", "dockyard_egress")
    assert probe(fenced, "get", BLOCKED_IP) == "blocked-server"  # the hole a flush opens
    tick = json.loads(
        sh(sys.executable, str(GUARD), "--upstream", RESOLVER_IP, "--log-queries", "--json").stdout
    )
    assert tick["changed"] is True
    assert probe(fenced, "get", BLOCKED_IP).startswith("failed:")
    assert probe(fenced, "get", "allowed.test") == "allowed-server"
    again = json.loads(
        sh(sys.executable, str(GUARD), "--upstream", RESOLVER_IP, "--log-queries", "--json").stdout
    )
    assert again["changed"] is False


def test_rules_survive_an_engine_restart(stack: Deployed, guarded: dict) -> None:
    """Restarts the machine's dockerd: `make test-runsc` deselects it (the shared engine's
    restart is proven once, under `make test`)."""
    fenced = stack.container("fenced")
    assert probe(fenced, "get", BLOCKED_IP).startswith("failed:")
    with dockerd.engine_down(dockerd.engine_argv()):
        time.sleep(0.5)
    fenced.reload()
    assert fenced.status == "running"
    assert probe(fenced, "get", BLOCKED_IP).startswith("failed:")
    assert probe(fenced, "get", "allowed.test") == "allowed-server"
