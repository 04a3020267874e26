"""playbooks/egress.yml (role egress_guard) on this machine, against environments realised
from a stack: one `egress: allowlist`, one `open`. Everything outside the environments
is a network namespace this test creates — an "allowed" and a "blocked" HTTP server and
an upstream resolver that knows the test names — so no packet leaves the machine.

What must hold: allowed name resolves and connects; blocked name does not resolve; the
blocked server's IP is dropped, and so is the allowed server on a port the allowlist
does not name (served, and reached by the open environment); DNS to any other resolver
never reaches it; the open environment is unaffected; root in the container cannot undo
any of it; the rules come back after a flush (the timer's re-run) and survive an engine
restart; a second role run changes nothing.

The host fence, against listeners this test starts on the host (``0.0.0.0`` and ``::``,
free ports): before the guard runs, each environment — one with ``credentials: brokered``
(its broker's internal network is a second interface), the allowlisted one with an extra
IPv6-enabled network attached after it was created, the open one — reaches them through
the gateway of every interface it has (enumerated inside the container, cross-checked
with the engine's record of its attachments); after the guard, through none.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from docker.models.containers import Container
from docker.types import IPAMConfig, IPAMPool

from tests.support import dockerd
from tests.support.ansible import LOCAL, REPO, run_playbook
from tests.support.engine import LABELS, RUN_ID, connects, exec_ok, unique_name, wait_for
from tests.support.stacks import Deployed, runs_on_gvisor, runsc_cannot

pytestmark = [pytest.mark.docker, pytest.mark.slow]

GUARD = REPO / "roles" / "egress_guard" / "files" / "dockyard-egress-guard.py"
SUBNET = "10.213.77"
ALLOWED_IP, BLOCKED_IP, RESOLVER_IP = f"{SUBNET}.2", f"{SUBNET}.3", f"{SUBNET}.4"
OTHER_PORT = 8080  # served on the allowed server too; the allowlist names only :80
# An IPv6-enabled network (ULA) the test attaches to the allowlisted environment: the
# components' networks have no IPv6 (the engine disables it on their interfaces).
V6_SUBNET, V6_GATEWAY = "fd7a:6d3e:77a1:1::/64", "fd7a:6d3e:77a1:1::1"
V4_SUBNET_OF_V6_NETWORK = "10.213.78.0/24"
# Another, not internal: attached to the allowlisted environment it takes its default route.
STRAY_V6_SUBNET, STRAY_V4_SUBNET = "fd7a:6d3e:77a1:2::/64", "10.213.79.0/24"

HTTP = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(sys.argv[2].encode())
    def log_message(self, *a): pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[3])), H).serve_forever()
"""

# Run inside an environment: every interface it has (but lo) and, for each, the gateway
# addresses it could use (its IPv4 route's gateway, the first address of its IPv4 subnet
# — the engine's gateway —, the first address of each IPv6 prefix and the bridge's
# link-local fe80::1, IPv6 default routes); try each on the host listeners' ports.
# Prints {"interface": {"target": connected?}}.
GATEWAYS = r"""
import concurrent.futures, ipaddress, json, os, socket, struct, sys
port4, port6 = int(sys.argv[1]), int(sys.argv[2])
names = {name for _, name in socket.if_nameindex()}
if os.path.isdir("/sys/class/net"):
    names |= set(os.listdir("/sys/class/net"))
names.discard("lo")
def netlink_v4():  # [(interface, address, prefix)] from RTM_GETADDR (runc and gVisor)
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    try:
        s.bind((0, 0))
        body = struct.pack("BBBBI", socket.AF_INET, 0, 0, 0, 0)
        s.send(struct.pack("IHHII", 16 + len(body), 22, 0x301, 1, 0) + body)
        found, done = [], False
        while not done:
            data, off = s.recv(65536), 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("IH", data, off)
                if kind in (2, 3) or length < 16:
                    done = True
                    break
                if kind == 20:
                    plen, index = data[off + 17], struct.unpack_from("I", data, off + 20)[0]
                    at = off + 24
                    while at + 4 <= off + length:
                        alen, atype = struct.unpack_from("HH", data, at)
                        if atype in (1, 2) and alen >= 8:
                            address = socket.inet_ntoa(data[at + 4:at + 8])
                            found.append((socket.if_indextoname(index), address, plen))
                            break
                        at += max((alen + 3) & ~3, 4)
                off += max((length + 3) & ~3, 16)
        return found
    finally:
        s.close()
def lines(path):
    try:
        return open(path).read().splitlines()
    except OSError:
        return []
targets = {}
addresses = netlink_v4()
for name in sorted(names):
    found = targets.setdefault(name, [])
    for dev, address, plen in addresses:
        if dev == name:
            subnet = ipaddress.IPv4Network(f"{address}/{plen}", strict=False)
            found.append((str(next(subnet.hosts())), port4, None))
    for line in lines("/proc/net/route")[1:]:
        f = line.split()
        if f[0] == name and f[2] != "00000000":
            found.append((socket.inet_ntoa(bytes.fromhex(f[2])[::-1]), port4, None))
    for line in lines("/proc/net/if_inet6"):
        hexaddr, _, plen, _, _, dev = line.split()
        if dev != name:
            continue
        ip = ipaddress.IPv6Address(bytes.fromhex(hexaddr))
        if ip.is_link_local:
            found.append(("fe80::1", port6, name))
        else:
            prefix = ipaddress.IPv6Network(f"{ip}/{int(plen, 16)}", strict=False)
            found.append((str(next(prefix.hosts())), port6, None))
    for line in lines("/proc/net/ipv6_route"):
        f = line.split()
        if f[9] == name and f[4] != "0" * 32:
            gw = ipaddress.IPv6Address(bytes.fromhex(f[4]))
            found.append((str(gw), port6, name if gw.is_link_local else None))
def attempt(target):
    host, port, scope = target
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        where = (host, port) if family == socket.AF_INET else (host, port, 0, socket.if_nametoindex(scope) if scope else 0)
        return s.connect_ex(where) == 0
    except OSError:
        return False
    finally:
        s.close()
with concurrent.futures.ThreadPoolExecutor(16) as pool:
    out = {
        name: dict(zip(
            [f"[{h}%{z}]:{p}" if z else (f"[{h}]:{p}" if ":" in h else f"{h}:{p}") for h, p, z in dict.fromkeys(found)],
            pool.map(attempt, list(dict.fromkeys(found))),
        ))
        for name, found in targets.items()
    }
print(json.dumps(out))
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
        for address, body, port in (
            (ALLOWED_IP, "allowed-server", 80),
            (ALLOWED_IP, "allowed-server-other-port", OTHER_PORT),
            (BLOCKED_IP, "blocked-server", 80),
        ):
            servers.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        sys.executable,
                        "-c",
                        HTTP,
                        address,
                        body,
                        str(port),
                    ]
                )
            )
        # Listening before any test asks them (a loaded host can take seconds per Python).
        for address, port in ((ALLOWED_IP, 80), (ALLOWED_IP, OTHER_PORT), (BLOCKED_IP, 80)):
            wait_for(
                lambda a=address, p=port: connects(a, p),
                60,
                interval=0.1,
                what=f"the upstream server on {address}:{port}",
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


SESSIONS = ("fenced", "open", "brokered")
# Measured with Debian's runsc (network=host): an interface the engine adds to a running
# sandbox never appears inside it (no interface, default route unchanged).
RUNSC_NO_HOTPLUG = "a network attached to a running gVisor sandbox does not appear inside it"


@pytest.fixture(scope="module")
def stack(deploy: Any, upstream: Upstream) -> Deployed:
    values = {
        "limits": {"cpus": 1, "memory": "512m"},
        "environments": [
            {"sessionId": "fenced", "egress": "allowlist", "egressAllow": ["allowed.test:80"]},
            {"sessionId": "open", "backend": "codex"},
            # A second interface: its broker's internal network (no dockyard.managed label).
            {"sessionId": "brokered", "credentials": "brokered", "secrets": ["ANTHROPIC_API_KEY"]},
        ],
    }
    deployed = deploy("egress", values, {"ANTHROPIC_API_KEY": f"sk-ant-egress-{RUN_ID}"})
    deployed.wait_ready(timeout=120)
    return deployed


class Listener:
    """A TCP listener of the host on every address of one family (``0.0.0.0``, or ``::``
    for IPv6 only), on a free port; counts the connections it accepts."""

    def __init__(self, family: socket.AddressFamily) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            connection.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=5)


@dataclass
class Listeners:
    v4: Listener
    v6: Listener


@pytest.fixture(scope="module")
def listeners() -> Iterator[Listeners]:
    found = Listeners(Listener(socket.AF_INET), Listener(socket.AF_INET6))
    try:
        yield found
    finally:
        found.v4.close()
        found.v6.close()


@pytest.fixture(scope="module")
def ipv6_network(stack: Deployed) -> Iterator[Any]:
    """An IPv6-enabled network (ULA) the test creates and attaches to the running
    allowlisted environment: a network added later, with no dockyard label. Internal,
    like a broker's network, so the environment's default route stays on its own network
    (an IPv6 network that is not internal takes it: see the stray test below). Gone after."""
    network = create_v6_network(stack.client, "v6", V4_SUBNET_OF_V6_NETWORK, V6_SUBNET, True)
    fenced = stack.container("fenced")
    try:
        network.connect(fenced)
        fenced.reload()
        wait_v6_ready(network, fenced)
        yield network
    finally:
        with contextlib.suppress(docker.errors.APIError):
            network.disconnect(fenced, force=True)
        network.remove()


def create_v6_network(
    client: docker.DockerClient, label: str, v4_subnet: str, v6_subnet: str, internal: bool
) -> Any:
    return client.networks.create(
        unique_name(label),
        driver="bridge",
        internal=internal,
        enable_ipv6=True,
        ipam=IPAMConfig(
            pool_configs=[
                IPAMPool(subnet=v4_subnet),  # the engine wants an IPv4 subnet as well
                IPAMPool(
                    subnet=v6_subnet, gateway=str(next(ipaddress.IPv6Network(v6_subnet).hosts()))
                ),
            ]
        ),
        labels=LABELS,
    )


def wait_v6_ready(network: Any, container: Container) -> None:
    """Until the IPv6 addresses on both ends (the bridge, the container) have passed
    duplicate address detection: a tentative address is not used yet."""
    bridge = f"br-{network.id[:12]}"

    def settled() -> bool:
        host_side = sh("ip", "-6", "addr", "show", "dev", bridge).stdout
        inside = exec_ok(container, ["cat", "/proc/net/if_inet6"]).split("\n")
        tentative = [line for line in inside if line and int(line.split()[4], 16) & 0x40]
        return "fe80::1/64" in host_side and "tentative" not in host_side and not tentative

    wait_for(settled, 30, what=f"the IPv6 addresses of {bridge} and {container.name}")


def gateways(container: Container, listeners: Listeners) -> dict[str, dict[str, bool]]:
    """{interface: {gateway target: connected?}}, enumerated inside the container."""
    ports = (str(listeners.v4.port), str(listeners.v6.port))
    return json.loads(exec_ok(container, ["python3", "-c", GATEWAYS, *ports], user="1000"))


@pytest.fixture(scope="module")
def controls(
    stack: Deployed, listeners: Listeners, ipv6_network: Any
) -> dict[str, dict[str, dict[str, bool]]]:
    """Before the guard runs: every session's gateways, tried (the tests judge them)."""
    return {session: gateways(stack.container(session), listeners) for session in SESSIONS}


@pytest.fixture(scope="module")
def guarded(
    stack: Deployed,
    upstream: Upstream,
    controls: dict,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict]:
    """The role applied twice (second: changed=0); everything it set up removed after.
    The guard covers every environment of the engine: when another run's environments
    came or went between the two runs (a shared engine), the pair is run again."""
    hosts = tmp_path_factory.mktemp("egress-hosts") / "hosts.ini"
    variables = " ".join(f"{k}={v}" for k, v in LOCAL.items())
    hosts.write_text(f"[docker_hosts]\nlocalhost ansible_connection=local {variables}\n")
    extra = {"egress_guard_upstream_dns": [RESOLVER_IP], "egress_guard_log_queries": True}
    try:
        runs = []
        for _ in range(3):
            before = engine_state(stack.client)
            runs.append(run_playbook("egress.yml", inventory=hosts, extra_vars=extra))
            runs.append(run_playbook("egress.yml", inventory=hosts, extra_vars=extra))
            if engine_state(stack.client) == before:
                break
        yield {"first": runs[0], "second": runs[-1]}
    finally:
        sh(sys.executable, str(GUARD), "--remove", check=False)
        Path("/etc/cron.d/dockyard-egress-guard").unlink(missing_ok=True)


def engine_state(client: docker.DockerClient) -> list[Any]:
    """What the guard reads: every environment container with the networks it is on,
    and every network."""
    containers = client.api.containers(all=True, filters={"label": "dockyard.managed=true"})
    return [
        sorted(
            (c["Id"], sorted(n["NetworkID"] for n in c["NetworkSettings"]["Networks"].values()))
            for c in containers
        ),
        sorted(n["Id"] for n in client.api.networks()),
    ]


def probe(container: Container, *args: str, user: str = "1000:1000") -> str:
    return exec_ok(container, ["python3", "-c", PROBE, *args], user=user).strip()


def test_role_is_idempotent(guarded: dict) -> None:
    assert guarded["first"].changed()["localhost"] > 0
    assert guarded["second"].changed() == {"localhost": 0}, guarded["second"].output[-3000:]


def test_allowed_name_resolves_andconnects(stack: Deployed, guarded: dict) -> None:
    fenced = stack.container("fenced")
    assert probe(fenced, "resolve", "allowed.test") == ALLOWED_IP
    assert probe(fenced, "get", "allowed.test") == "allowed-server"


def test_blocked_name_ip_and_other_resolvers_are_refused(
    stack: Deployed, guarded: dict, upstream: Upstream
) -> None:
    fenced = stack.container("fenced")
    assert probe(fenced, "resolve", "blocked.test").startswith("failed:")
    assert probe(fenced, "get", BLOCKED_IP).startswith("failed:")
    # Straight to another resolver: answered by the guard's forwarder instead (REFUSED),
    # and the real resolver never sees the name.
    assert probe(fenced, "dns", RESOLVER_IP, "blocked.test") == "rcode=5 answers=0"
    assert "blocked.test" not in upstream.queries()


def test_allowed_host_on_another_port_is_dropped(stack: Deployed, guarded: dict) -> None:
    """The allowlist names allowed.test:80; the same server also serves OTHER_PORT."""
    target = f"{ALLOWED_IP}:{OTHER_PORT}"
    # Served and routable: the open environment (no allowlist) gets the page.
    assert probe(stack.container("open"), "get", target) == "allowed-server-other-port"
    assert probe(stack.container("fenced"), "get", "allowed.test") == "allowed-server"
    assert probe(stack.container("fenced"), "get", target).startswith("failed:")


def _attempts(results: dict[str, dict[str, bool]]) -> dict[str, bool]:
    return {
        f"{iface} {target}": ok for iface, tried in results.items() for target, ok in tried.items()
    }


def test_every_interface_gateway_is_fenced(
    stack: Deployed, listeners: Listeners, controls: dict, ipv6_network: Any, guarded: dict
) -> None:
    """Issue 25.1: the host, through the gateway of every interface of every environment
    (the brokered one's broker network, the allowlisted one's added IPv6 network)."""
    for session in SESSIONS:
        container = stack.container(session)
        container.reload()
        attached = dict(container.attrs["NetworkSettings"]["Networks"])
        if runs_on_gvisor(container):
            attached.pop(ipv6_network.name, None)  # RUNSC_NO_HOTPLUG: nothing to reach by
        before = controls[session]
        # The enumeration inside saw every attachment the engine records, and tried each
        # network's gateway.
        assert len(before) == len(attached), (session, before, list(attached))
        tried = {target.split(" ")[1].rsplit(":", 1)[0] for target in _attempts(before)}
        for name in attached:
            assert network_gateway(stack, name) in tried, (session, name, tried)
        # Positive control: without the guard, every one of them reached the host.
        assert before, session
        assert all(_attempts(before).values()), (session, before)
    assert len(controls["brokered"]) >= 2  # its own network and its broker's
    accepted = (listeners.v4.accepted, listeners.v6.accepted)
    after = {session: gateways(stack.container(session), listeners) for session in SESSIONS}
    reached = {s: [t for t, ok in _attempts(a).items() if ok] for s, a in after.items()}
    assert reached == {session: [] for session in SESSIONS}
    assert (listeners.v4.accepted, listeners.v6.accepted) == accepted


def network_gateway(stack: Deployed, name: str) -> str:
    """The IPv4 gateway the engine gave a network (its bridge's address on the host)."""
    (config,) = [
        c for c in stack.client.networks.get(name).attrs["IPAM"]["Config"] if "." in c["Subnet"]
    ]
    if config.get("Gateway"):
        return str(config["Gateway"])
    return str(next(ipaddress.IPv4Network(config["Subnet"]).hosts()))


@runsc_cannot(RUNSC_NO_HOTPLUG)
def test_ipv6_is_closed(
    stack: Deployed, listeners: Listeners, controls: dict, ipv6_network: Any, guarded: dict
) -> None:
    """A host listener on ``::`` (IPv6 only), reached over the allowlisted environment's
    IPv6 network before the guard ran; after it, by no IPv6 address."""
    v6 = {
        target: ok
        for target, ok in _attempts(controls["fenced"]).items()
        if target.split(" ")[1].startswith("[")
    }
    port = listeners.v6.port
    interface = next(
        i for i, tried in controls["fenced"].items() if f"[{V6_GATEWAY}]:{port}" in tried
    )
    assert v6[f"{interface} [{V6_GATEWAY}]:{port}"] is True  # the control
    assert v6[f"{interface} [fe80::1%{interface}]:{port}"] is True
    accepted = listeners.v6.accepted
    after = _attempts(gateways(stack.container("fenced"), listeners))
    assert {t: after[t] for t in v6} == dict.fromkeys(v6, False)
    assert listeners.v6.accepted == accepted


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
    tick = guard_tick()
    assert tick["changed"] is True
    assert probe(fenced, "get", BLOCKED_IP).startswith("failed:")
    assert probe(fenced, "get", "allowed.test") == "allowed-server"
    # Unchanged on the next tick, unless another run's environments came or went meanwhile.
    for _ in range(3):
        before = engine_state(stack.client)
        again = guard_tick()
        if engine_state(stack.client) == before:
            break
    assert again["changed"] is False, again["actions"]


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


@runsc_cannot(RUNSC_NO_HOTPLUG)
def test_another_network_is_no_way_around_the_allowlist(stack: Deployed, guarded: dict) -> None:
    """A network attached to the allowlisted environment later that takes its default
    route (the engine moves it to an IPv6-enabled one): before the guard's next run the
    blocked server is reached through it; after, nothing leaves through it."""
    fenced = stack.container("fenced")
    network = create_v6_network(stack.client, "stray", STRAY_V4_SUBNET, STRAY_V6_SUBNET, False)
    try:
        network.connect(fenced)
        gateway = str(next(ipaddress.IPv4Network(STRAY_V4_SUBNET).hosts()))
        route = exec_ok(fenced, ["cat", "/proc/net/route"])
        default = [line.split() for line in route.splitlines()[1:] if line.split()[1] == "00000000"]
        assert [socket.inet_ntoa(bytes.fromhex(f[2])[::-1]) for f in default] == [gateway]
        assert probe(fenced, "get", BLOCKED_IP) == "blocked-server"  # the control: a way out
        guard_tick()
        assert probe(fenced, "get", BLOCKED_IP).startswith("failed:")
        assert probe(fenced, "get", ALLOWED_IP).startswith("failed:")
    finally:
        with contextlib.suppress(docker.errors.APIError):
            network.disconnect(fenced, force=True)
        network.remove()
        guard_tick()
    assert probe(fenced, "get", "allowed.test") == "allowed-server"


def guard_tick() -> dict:
    """One run of the guard as the timer runs it."""
    result = sh(sys.executable, str(GUARD), "--upstream", RESOLVER_IP, "--log-queries", "--json")
    return json.loads(result.stdout)
