#!/usr/bin/env python3
"""dockyard egress guard: enforce each allowlisted environment's egress on the host.

Finds the Docker networks labelled ``dockyard.egress=allowlist`` (the components put
the normalised allowlist in ``dockyard.egress.allow``) and makes the host match them:

- one nftables table, ``inet dockyard_egress``, outside every container's reach:
  traffic entering the host from the network's bridge is dropped unless it goes to an
  allowed IPv4 network/port or to an address a DNS answer for an allowed name produced;
  all IPv6 from the bridge is dropped; DNS (any resolver, udp/tcp 53) is redirected to
  the guard's own forwarder on the bridge gateway, and nothing else on the host answers
  the network;
- one dnsmasq forwarder per network, listening on its gateway: it forwards only the
  allowed names to the upstream resolvers, refuses every other name, drops AAAA answers,
  and feeds each answered IPv4 address into the network's nftables set (entries expire
  ``--address-ttl`` seconds after the last answer, so re-resolution keeps them fresh).

Idempotent: the table is only replaced when it is missing (engine restart, rule flush)
or differs from the desired one, and a forwarder only restarted when its configuration
changed or it is not running. ``--json`` prints what it did; ``changed`` is true when
anything was applied. ``--remove`` takes everything down.

Host fence (unless ``--no-host-fence``): every network any managed environment container
is attached to, as the engine records the containers' attachments — its own network, a
broker's internal network, extra networks, whatever is attached later (the next run picks
it up), open environments too, whatever the networks' labels say. In the same table,
traffic from such a bridge to the host itself is dropped (only replies to connections the
host opened pass; allowlisted networks keep their DNS forwarder), and so is forwarded
traffic to link-local 169.254.0.0/16, where a cloud VM's metadata service hands out the
instance's credentials. An attachment the fence cannot cover (host networking, a driver
without a bridge on this host) is applied around, reported under ``unfenced`` and fails
the run (exit 1). Published ports are the components' business (they bind to 127.0.0.1,
docs/access.md).

stdlib only; needs the engine's socket (DOCKER_HOST, default the local one), nft and
dnsmasq; runs as root.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

# Installed, the package's host modules sit beside this script as dockyard/ (its directory
# is sys.path[0]; host_common installs them); in the repository, the checkout's package.
from dockyard import host

DEFAULT_TABLE = "dockyard_egress"
TABLE = DEFAULT_TABLE
LABEL_MODE = host.LABEL_EGRESS
LABEL_ALLOW = host.LABEL_EGRESS_ALLOW
# The role's defaults (roles/egress_guard) are the same values; a contract test keeps
# them equal.
# Kept across reboots: --restore applies the last fence and allowlists from it at boot.
DEFAULT_STATE_DIR = "/var/lib/dockyard/egress"
DEFAULT_ADDRESS_TTL = 3600
LINK_LOCAL = "169.254.0.0/16"


class GuardError(host.HostError):
    pass


@dataclass
class Network:
    id: str
    name: str
    bridge: str
    gateway: str
    domains: dict[str, list[int | None]] = field(default_factory=dict)
    cidrs: list[tuple[str, int | None]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.id[:12]


def run(argv: Sequence[str], stdin: str | None = None) -> str:
    try:
        return host.run(argv, stdin=stdin)
    except host.CommandError as exc:
        raise GuardError(str(exc)) from None


def parse_rule(rule: str) -> tuple[str, str, int | None]:
    """('domain'|'cidr', target, port) from a normalised rule; refuses anything else."""
    target, port = rule, None
    if rule.count(":") == 1:
        target, _, port_text = rule.partition(":")
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise GuardError(f"rule {rule!r}: bad port")
        port = int(port_text)
    try:
        return "cidr", str(ipaddress.IPv4Network(target, strict=False)), port
    except ValueError:
        pass
    labels = target.split(".")
    if len(labels) < 2 or not all(
        label
        and len(label) <= 63
        and all(c.isalnum() or c == "-" for c in label)
        and label.isascii()
        for label in labels
    ):
        raise GuardError(f"rule {rule!r}: not a domain, IPv4 address or CIDR")
    return "domain", target.lower(), port


def engine() -> host.Engine:
    try:
        return host.Engine.from_env()
    except host.HostError as exc:
        raise GuardError(str(exc)) from None


def _get(path: str) -> Any:
    try:
        return engine().request("GET", path)
    except host.HostError as exc:
        raise GuardError(str(exc)) from None


def _label_filter(*selectors: str | None) -> str:
    return urllib.parse.quote(json.dumps({"label": [s for s in selectors if s]}))


def _gateway(info: dict[str, Any]) -> str | None:
    """The network's IPv4 gateway: IPAM's, else the bridge driver's default (the first
    address of the subnet, which the engine takes when none was given)."""
    for config in (info.get("IPAM") or {}).get("Config") or []:
        subnet = config.get("Subnet", "")
        if "." not in subnet:
            continue
        if config.get("Gateway"):
            return str(config["Gateway"]).split("/")[0]
        return str(next(ipaddress.IPv4Network(subnet, strict=False).hosts()))
    return None


def _network(info: dict[str, Any]) -> Network:
    options = info.get("Options") or {}
    bridge = options.get("com.docker.network.bridge.name") or f"br-{info['Id'][:12]}"
    return Network(info["Id"], info["Name"], bridge, _gateway(info) or "")


def networks(
    scope: str | None = None, listed: Sequence[dict[str, Any]] | None = None
) -> list[Network]:
    """The allowlisted networks (label ``dockyard.egress=allowlist``), with their rules;
    ``scope`` (a ``key=value`` label) narrows them to the networks carrying it."""
    if listed is None:
        listed = _get("/networks")
    found = []
    for info in listed:
        labels = info.get("Labels") or {}
        if labels.get(LABEL_MODE) != "allowlist" or not _has_label(labels, scope):
            continue
        network = _network(info)
        if not network.gateway:
            raise GuardError(f"network {info['Name']}: no IPv4 gateway to serve DNS on")
        for rule in json.loads(labels.get(LABEL_ALLOW, "[]")):
            kind, target, port = parse_rule(str(rule))
            if kind == "cidr":
                network.cidrs.append((target, port))
            else:
                network.domains.setdefault(target, []).append(port)
        found.append(network)
    return sorted(found, key=lambda n: n.name)


def _has_label(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    key, _, value = selector.partition("=")
    return labels.get(key) == value


# Drivers whose containers reach the host through a Linux bridge on it, which the fence
# matches by name; "null" (network none) gives a container no interface but loopback.
FENCEABLE_DRIVERS = {"bridge"}
NO_INTERFACE_DRIVERS = {"null"}


@dataclass(frozen=True)
class Stray:
    """An address an allowlisted environment holds on a network that is not its
    allowlisted one: nothing from it may leave that bridge (it would bypass the list)."""

    network: Network
    address: str
    container: str


def attached(
    containers: Sequence[dict[str, Any]],
    listed: Sequence[dict[str, Any]],
    shared: dict[str, dict[str, Any]] | None = None,
) -> tuple[list[Network], list[str], list[Stray]]:
    """Every network the given environment containers are attached to, as the engine
    records it (``NetworkSettings.Networks``; a container that joins another's network
    namespace with ``container:<id>`` is on that one's networks, from ``shared``), whatever
    the networks' labels: ``(fenceable networks, problems, strays)``. A problem is an
    attachment the fence cannot cover (host networking, a driver without a bridge on this
    host); a stray is an allowlisted environment's address on a network without an
    allowlist."""
    by_id = {info["Id"]: info for info in listed}
    by_name = {info["Name"]: info for info in listed}
    shared = shared or {}
    found: dict[str, Network] = {}
    problems: list[str] = []
    strays: dict[tuple[str, str], Stray] = {}
    for container in containers:
        name = (container.get("Names") or [container.get("Name") or container["Id"][:12]])[0]
        name = name.lstrip("/")
        allowlisted = (
            (container.get("Labels") or (container.get("Config") or {}).get("Labels")) or {}
        ).get(LABEL_MODE) == "allowlist"
        mode = str((container.get("HostConfig") or {}).get("NetworkMode") or "")
        sources = [container]
        if mode.startswith("container:"):
            other = shared.get(mode.removeprefix("container:"))
            if other is None:
                problems.append(f"{name}: shares the network of {mode}, which is not found")
                continue
            sources.append(other)
        for source in sources:
            attachments = ((source.get("NetworkSettings") or {}).get("Networks")) or {}
            for net_name, endpoint in attachments.items():
                endpoint = endpoint or {}
                info = by_id.get(endpoint.get("NetworkID") or "") or by_name.get(net_name)
                if info is None:
                    continue  # removed since the container was listed
                driver = info.get("Driver") or ""
                if driver in NO_INTERFACE_DRIVERS:
                    continue
                if driver not in FENCEABLE_DRIVERS:
                    problems.append(
                        f"{name}: network {info['Name']} (driver {driver}) cannot be fenced "
                        f"(allowed: {', '.join(sorted(FENCEABLE_DRIVERS))})"
                    )
                    continue
                network = found.setdefault(info["Id"], _network(info))
                if allowlisted and (info.get("Labels") or {}).get(LABEL_MODE) != "allowlist":
                    for key in ("IPAddress", "GlobalIPv6Address"):
                        if endpoint.get(key):
                            address = str(ipaddress.ip_address(endpoint[key]))
                            strays[(network.id, address)] = Stray(network, address, name)
    return (
        sorted(found.values(), key=lambda n: n.name),
        sorted(set(problems)),
        sorted(strays.values(), key=lambda s: (s.network.name, s.address)),
    )


def fenced_networks(
    scope: str | None = None, listed: Sequence[dict[str, Any]] | None = None
) -> tuple[list[Network], list[str], list[Stray]]:
    """What the host fence covers: every network a managed environment container (running
    or not) is attached to, read from the containers on the engine — broker networks,
    extra networks, anything attached later — plus networks labelled managed that no
    container has joined yet. ``scope`` narrows to containers and networks carrying it.
    Also the strays (:func:`attached`)."""
    if listed is None:
        listed = _get("/networks")
    containers = _get(
        f"/containers/json?all=1&filters={_label_filter(host.MANAGED_SELECTOR, scope)}"
    )
    shared = {}
    for container in containers:
        mode = str((container.get("HostConfig") or {}).get("NetworkMode") or "")
        if mode.startswith("container:"):
            ref = mode.removeprefix("container:")
            try:
                shared[ref] = engine().inspect(ref)
            except host.HostError:
                continue  # reported as not found
    nets, problems, strays = attached(containers, listed, shared)
    ids = {net.id for net in nets}
    managed_key, _, managed_value = host.MANAGED_SELECTOR.partition("=")
    for info in listed:
        labels = info.get("Labels") or {}
        if (
            info["Id"] not in ids
            and labels.get(managed_key) == managed_value
            and _has_label(labels, scope)
            and info.get("Driver") in FENCEABLE_DRIVERS
        ):
            nets.append(_network(info))
    return sorted(nets, key=lambda n: n.name), problems, strays


def _set_name(network: Network, kind: str, port: int | None) -> str:
    return f"n{network.key}_{kind}_{'any' if port is None else port}"


def parse_exception(text: str) -> tuple[str, int | None]:
    """``ADDRESS[:PORT]`` (``gateway`` = each network's own gateway) a fenced network may
    still reach on the host or in link-local."""
    target, _, port_text = text.partition(":")
    port = None
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise GuardError(f"--host-exception {text!r}: bad port (allowed: 1-65535)")
        port = int(port_text)
    if target != "gateway":
        try:
            target = str(ipaddress.IPv4Address(target))
        except ValueError:
            raise GuardError(
                f"--host-exception {text!r} is not allowed (allowed: IPv4 address or gateway, "
                "with an optional :port)"
            ) from None
    return target, port


def ruleset(
    nets: Sequence[Network],
    address_ttl: int,
    fenced: Sequence[Network] = (),
    exceptions: Sequence[tuple[str, int | None]] = (),
    strays: Sequence[Stray] = (),
) -> str:
    """The whole table, declared then replaced in one transaction. ``fenced``: networks
    kept off the host and link-local (allowlisted ones are already kept off both), but
    for the ``exceptions``. ``strays``: allowlisted environments' addresses on other
    networks, whose traffic may stay on that bridge and go nowhere else."""
    sets, redirect, inbound, outbound = [], [], [], []
    allowlisted = {net.id for net in nets}
    for stray in strays:
        family = "ip6" if ":" in stray.address else "ip"
        outbound.append(
            f'    iifname "{stray.network.bridge}" oifname != "{stray.network.bridge}" '
            f"{family} saddr {stray.address} counter drop "
            f'comment "{stray.container}: allowlisted, not on {stray.network.name}"'
        )
    for net in fenced:
        if net.id in allowlisted:
            continue
        iif = f'iifname "{net.bridge}"'
        allowed = []
        for target, port in exceptions:
            address = net.gateway if target == "gateway" else target
            match = "" if port is None else f" meta l4proto {{ tcp, udp }} th dport {port}"
            allowed.append(f"{iif} ip daddr {address}{match} accept")
        inbound += [
            f"    {iif} ct state established,related accept",
            *(f"    {rule}" for rule in allowed),
            f'    {iif} counter drop comment "{net.name}: not the host"',
        ]
        outbound += [
            *(f"    {rule}" for rule in allowed),
            f'    {iif} ip daddr {LINK_LOCAL} counter drop comment "{net.name}: no link-local"',
        ]
    for net in nets:
        iif = f'iifname "{net.bridge}"'
        dns_ports = sorted({p for ports in net.domains.values() for p in ports}, key=str)
        for port in dns_ports:
            sets.append(
                f"  set {_set_name(net, 'dns', port)} {{ type ipv4_addr; flags timeout; "
                f"timeout {address_ttl}s; }}"
            )
        cidr_ports = sorted({p for _, p in net.cidrs}, key=str)
        for port in cidr_ports:
            elements = ", ".join(c for c, p in net.cidrs if p == port)
            sets.append(
                f"  set {_set_name(net, 'net', port)} {{ type ipv4_addr; flags interval; "
                f"elements = {{ {elements} }} }}"
            )
        redirect.append(
            f"    {iif} meta l4proto {{ tcp, udp }} th dport 53 dnat ip to {net.gateway}"
        )
        inbound += [
            f"    {iif} ct state established,related accept",
            f"    {iif} ip daddr {net.gateway} meta l4proto {{ tcp, udp }} th dport 53 accept",
            f'    {iif} counter drop comment "{net.name}: only the DNS forwarder"',
        ]
        outbound += [
            f"    {iif} ct state established,related accept",
            f'    {iif} meta nfproto ipv6 counter drop comment "{net.name}: no IPv6"',
        ]
        for kind, ports in (("dns", dns_ports), ("net", cidr_ports)):
            for port in ports:
                match = "" if port is None else f" meta l4proto {{ tcp, udp }} th dport {port}"
                outbound.append(f"    {iif} ip daddr @{_set_name(net, kind, port)}{match} accept")
        outbound.append(f'    {iif} counter drop comment "{net.name}: not on the allowlist"')
    body = "\n".join(
        [
            f"table inet {TABLE} {{",
            *sets,
            "  chain dns_redirect {",
            "    type nat hook prerouting priority dstnat - 10; policy accept;",
            *redirect,
            "  }",
            "  chain egress_in {",
            "    type filter hook input priority filter - 10; policy accept;",
            *inbound,
            "  }",
            "  chain egress_out {",
            "    type filter hook forward priority filter - 10; policy accept;",
            *outbound,
            "  }",
            "}",
        ]
    )
    return body + "\n"


def dnsmasq_config(net: Network, upstreams: Sequence[str], state_dir: Path, log: bool) -> str:
    lines = [
        f"# dockyard egress forwarder for network {net.name} (generated; do not edit)",
        f"listen-address={net.gateway}",
        "bind-dynamic",
        "except-interface=lo",
        "no-resolv",
        "no-hosts",
        "no-poll",
        "filter-AAAA",
        "cache-size=1000",
        f"pid-file={state_dir / (net.key + '.pid')}",
    ]
    if log:
        lines += ["log-queries", f"log-facility={state_dir / (net.key + '.log')}"]
    for domain, ports in sorted(net.domains.items()):
        lines += [f"server=/{domain}/{upstream}" for upstream in upstreams]
        targets = ",".join(
            f"4#inet#{TABLE}#{_set_name(net, 'dns', port)}" for port in sorted(set(ports), key=str)
        )
        lines.append(f"nftset=/{domain}/{targets}")
    return "\n".join(lines) + "\n"


RESOLV_CONF = "/etc/resolv.conf"
# systemd-resolved's own upstreams: /etc/resolv.conf then names only its stub 127.0.0.53.
RESOLVED_RESOLV_CONF = "/run/systemd/resolve/resolv.conf"


def _nameservers(path: str) -> list[ipaddress.IPv4Address] | None:
    """The IPv4 nameservers ``path`` lists; None when it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return None
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                found.append(ipaddress.IPv4Address(parts[1]))
            except ValueError:
                continue
    return found


def host_upstreams(
    resolv_conf: str = RESOLV_CONF, resolved_conf: str = RESOLVED_RESOLV_CONF
) -> list[str]:
    """The host's own IPv4 resolvers. Loopback ones cannot be reached from the bridges: when
    ``resolv_conf`` names only those (systemd-resolved's stub 127.0.0.53, a local cache), the
    real upstreams systemd-resolved writes to ``resolved_conf`` are read instead. GuardError
    names what was read when neither gives one."""
    listed = _nameservers(resolv_conf)
    found = [str(a) for a in listed or [] if not a.is_loopback]
    if found:
        return found
    resolved = _nameservers(resolved_conf)
    found = [str(a) for a in resolved or [] if not a.is_loopback]
    if found:
        return found
    local = ", ".join(str(a) for a in listed or []) or "none"
    raise GuardError(
        f"no upstream resolver: {resolv_conf} names no IPv4 resolver but loopback ones ({local})"
        + (
            f" and {resolved_conf} (systemd-resolved's upstreams) names none either"
            if resolved is not None
            else f" and {resolved_conf} (systemd-resolved's upstreams) does not exist"
        )
        + "; set egress_guard_upstream_dns (--upstream ADDRESS)"
    )


def table_present() -> bool:
    return (
        subprocess.run(
            ["nft", "list", "table", "inet", TABLE], capture_output=True, check=False
        ).returncode
        == 0
    )


def _pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    return pid if cmdline.exists() and b"dnsmasq" in cmdline.read_bytes() else None


def _stop(pid_file: Path) -> bool:
    pid = _pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        if _pid(pid_file) is None:
            break
        time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    return True


# Under systemd (--forwarder-unit NAME): each forwarder is the instance NAME@<network key>
# of a template unit the role installs (dnsmasq in the foreground on <state dir>/<key>.conf),
# enabled so it starts at boot before the engine: a service of its own, never a process
# left in the cgroup of the oneshot job that started it (which systemd kills when it exits).
FORWARDER_UNIT: str | None = None


def _unit(key: str) -> str:
    return f"{FORWARDER_UNIT}@{key}.service"


def forwarder_running(state_dir: Path, key: str) -> bool:
    if FORWARDER_UNIT:
        active = subprocess.run(
            ["systemctl", "is-active", "--quiet", _unit(key)], capture_output=True, check=False
        )
        return active.returncode == 0
    return _pid(state_dir / f"{key}.pid") is not None


def start_forwarder(state_dir: Path, key: str) -> None:
    """(Re)start the forwarder of ``key`` on its configuration file."""
    if FORWARDER_UNIT:
        run(["systemctl", "enable", "--quiet", _unit(key)])
        run(["systemctl", "restart", _unit(key)])
        return
    _stop(state_dir / f"{key}.pid")
    run(["dnsmasq", f"--conf-file={state_dir / (key + '.conf')}"])


def stop_forwarder(state_dir: Path, key: str) -> bool:
    if FORWARDER_UNIT:
        running = forwarder_running(state_dir, key)
        run(["systemctl", "disable", "--now", "--quiet", _unit(key)])
        (state_dir / f"{key}.pid").unlink(missing_ok=True)
        return running
    return _stop(state_dir / f"{key}.pid")


def reconcile(
    upstreams: Sequence[str],
    state_dir: Path,
    address_ttl: int,
    log: bool,
    host_fence: bool = True,
    scope: str | None = None,
    exceptions: Sequence[tuple[str, int | None]] = (),
) -> dict[str, object]:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    listed = _get("/networks")
    nets = networks(scope, listed)
    fenced, problems, strays = fenced_networks(scope, listed) if host_fence else ([], [], [])
    desired = ruleset(nets, address_ttl, fenced, exceptions, strays)
    applied = state_dir / "ruleset.nft"
    actions: list[str] = []
    table_replaced = not table_present() or not applied.exists() or applied.read_text() != desired
    if table_replaced:
        # Declare, delete and define in one transaction: never a moment without rules.
        run(["nft", "-f", "-"], stdin=f"table inet {TABLE}\ndelete table inet {TABLE}\n{desired}")
        applied.write_text(desired)
        actions.append("nftables table applied")
    wanted = {net.key for net in nets}
    wanted_ids = {net.id for net in nets}
    for net in nets:
        conf = state_dir / f"{net.key}.conf"
        text = dnsmasq_config(net, upstreams, state_dir, log)
        stale = not conf.exists() or conf.read_text() != text
        # A replaced table lost the resolved addresses: restart so the cache refills them.
        if stale or table_replaced or not forwarder_running(state_dir, net.key):
            conf.write_text(text)
            start_forwarder(state_dir, net.key)
            actions.append(f"forwarder for {net.name} (re)started on {net.gateway}")
    for conf in state_dir.glob("*.conf"):
        if conf.stem not in wanted:
            stop_forwarder(state_dir, conf.stem)
            conf.unlink()
            actions.append(f"forwarder {conf.stem} removed (network gone)")
    return {
        "changed": bool(actions),
        "actions": actions,
        "fenced": [n.name for n in fenced if n.id not in wanted_ids],
        "unfenced": problems,
        "networks": [
            {
                "name": n.name,
                "bridge": n.bridge,
                "gateway": n.gateway,
                "domains": sorted(n.domains),
                "cidrs": [c if p is None else f"{c}:{p}" for c, p in n.cidrs],
            }
            for n in nets
        ],
    }


def restore(state_dir: Path) -> dict[str, object]:
    """At boot, before the engine starts containers: the last applied table and forwarders,
    from the state directory alone (the engine is not running yet, so nothing is read from
    it). The forwarders bind their gateway addresses when the engine brings the bridges up
    (bind-dynamic); the next regular run reconciles with the engine's present state."""
    actions: list[str] = []
    applied = state_dir / "ruleset.nft"
    if applied.is_file():
        run(
            ["nft", "-f", "-"],
            stdin=f"table inet {TABLE}\ndelete table inet {TABLE}\n{applied.read_text()}",
        )
        actions.append("nftables table restored")
    # Forwarder units are enabled (WantedBy=docker.service): systemd starts them itself.
    for conf in (
        sorted(state_dir.glob("*.conf")) if state_dir.is_dir() and not FORWARDER_UNIT else []
    ):
        pid_file = state_dir / f"{conf.stem}.pid"
        if _pid(pid_file) is None:
            pid_file.unlink(missing_ok=True)
            run(["dnsmasq", f"--conf-file={conf}"])
            actions.append(f"forwarder {conf.stem} started")
    return {
        "changed": bool(actions),
        "actions": actions,
        "fenced": [],
        "unfenced": [],
        "networks": [],
    }


def remove(state_dir: Path) -> dict[str, object]:
    actions = []
    if table_present():
        run(["nft", "delete", "table", "inet", TABLE])
        actions.append("nftables table deleted")
    if state_dir.is_dir():
        keys = {p.stem for p in state_dir.glob("*.pid")} | {
            c.stem for c in state_dir.glob("*.conf")
        }
        for key in sorted(keys - {"ruleset"}):
            if stop_forwarder(state_dir, key):
                actions.append(f"forwarder {key} stopped")
        for leftover in state_dir.iterdir():
            leftover.unlink()
    return {
        "changed": bool(actions),
        "actions": actions,
        "fenced": [],
        "unfenced": [],
        "networks": [],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        help="IPv4 resolver the forwarders ask (repeatable; default: the host's resolv.conf)",
    )
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    parser.add_argument(
        "--address-ttl",
        type=int,
        default=DEFAULT_ADDRESS_TTL,
        help="seconds an answered address stays allowed",
    )
    parser.add_argument("--log-queries", action="store_true")
    parser.add_argument(
        "--no-host-fence",
        dest="host_fence",
        action="store_false",
        help="leave open environments' traffic to the host and to 169.254.0.0/16 alone",
    )
    parser.add_argument(
        "--host-exception",
        action="append",
        default=[],
        help="ADDRESS[:PORT] (or gateway[:PORT]) the fence lets environments reach (repeatable)",
    )
    parser.add_argument(
        "--scope-label",
        help="KEY=VALUE: only networks with this label too (tests on a shared engine)",
    )
    parser.add_argument(
        "--table", default=DEFAULT_TABLE, help="nftables table (inet) for the rules"
    )
    parser.add_argument(
        "--remove", action="store_true", help="delete the table and stop every forwarder"
    )
    parser.add_argument(
        "--forwarder-unit",
        help="systemd template unit NAME: run each forwarder as NAME@<network>.service",
    )
    parser.add_argument(
        "--restore",
        action="store_true",
        help="at boot, before the engine: apply the last table and start the last forwarders",
    )
    parser.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    global TABLE, FORWARDER_UNIT  # every rule, set and forwarder names the one table
    args = build_parser().parse_args(argv)
    TABLE = args.table
    FORWARDER_UNIT = args.forwarder_unit
    try:
        if not all(c.isascii() and (c.islower() or c.isdigit() or c == "_") for c in TABLE):
            raise GuardError(f"--table {TABLE!r} is not allowed (allowed: a-z 0-9 _)")
        unit = args.forwarder_unit
        if unit is not None and not (
            unit and all(c.isascii() and (c.isalnum() or c in "-_") for c in unit)
        ):
            raise GuardError(f"--forwarder-unit {unit!r} is not allowed (allowed: a-z A-Z 0-9 - _)")
        if args.scope_label is not None and "=" not in args.scope_label:
            raise GuardError(
                f"--scope-label {args.scope_label!r} is not allowed (allowed: KEY=VALUE)"
            )
        for upstream in args.upstream:
            ipaddress.IPv4Address(upstream)
        if not 60 <= args.address_ttl <= 86400:
            raise GuardError(
                f"--address-ttl {args.address_ttl} is not allowed (allowed: 60-86400 seconds)"
            )
        state_dir = Path(args.state_dir)
        if args.remove:
            result = remove(state_dir)
        elif args.restore:
            result = restore(state_dir)
        else:
            upstreams = args.upstream or host_upstreams()
            result = reconcile(
                upstreams,
                state_dir,
                args.address_ttl,
                args.log_queries,
                host_fence=args.host_fence,
                scope=args.scope_label,
                exceptions=[parse_exception(text) for text in args.host_exception],
            )
    except (GuardError, ValueError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    actions, unfenced = cast(list[str], result["actions"]), cast(list[str], result["unfenced"])
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for action in actions or ["nothing to do"]:
            print(f"dockyard-egress-guard: {action}")
    # Everything else is applied; an attachment the fence cannot cover fails the run
    # (the role's task, the timer's unit) so it is seen.
    for problem in unfenced:
        print(f"ERROR: not fenced: {problem}", file=sys.stderr)
    return 1 if unfenced else 0


if __name__ == "__main__":
    sys.exit(main())
