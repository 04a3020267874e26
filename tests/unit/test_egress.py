"""Egress allowlists: the components' normalisation and the host guard's generated
rules and forwarder configuration (pure functions; the real thing runs in
tests/roles/test_egress_guard.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dockyard import egress
from tests.support.scripts import load_script

guard = load_script("egress_guard", "dockyard-egress-guard.py")


def test_presets_expand_and_entries_normalise_without_duplicates() -> None:
    rules = egress.expand(["npm", "registry.npmjs.org:443", "10.1.2.3", "10.1.0.0/16:5432"])
    assert rules == ["registry.npmjs.org:443", "10.1.2.3/32", "10.1.0.0/16:5432"]


@pytest.mark.parametrize(
    "entry", ["*.x.com", "X.com", "x", "x.com:0", "::1", "0.0.0.0/0", " x.com"]
)
def test_bad_entries_are_refused(entry: str) -> None:
    with pytest.raises(egress.EgressError):
        egress.normalise(entry)


def test_labels_carry_the_rules_only_for_allowlists() -> None:
    assert egress.labels("open", []) == {"dockyard.egress": "open"}
    labels = egress.labels("allowlist", ["pypi.org"])
    assert json.loads(labels["dockyard.egress.allow"]) == ["pypi.org"]


def test_guard_reads_exactly_what_the_components_write() -> None:
    rules = egress.expand([*list(egress.PRESETS), "10.0.0.0/8:5432", "example.org"])
    parsed = [guard.parse_rule(rule) for rule in rules]
    assert ("domain", "api.anthropic.com", 443) in parsed
    assert ("cidr", "10.0.0.0/8", 5432) in parsed
    assert ("domain", "example.org", None) in parsed
    with pytest.raises(guard.GuardError):
        guard.parse_rule("evil.com;rm -rf /")


def network() -> object:
    net = guard.Network("0123456789abcdef", "dockyard-dev-a", "br-0123456789ab", "172.30.0.1")
    net.domains = {"api.anthropic.com": [443], "pypi.org": [None]}
    net.cidrs = [("10.0.0.0/8", 5432), ("192.0.2.7/32", None)]
    return net


def test_ruleset_drops_all_but_the_allowlist_and_ipv6_and_redirects_dns() -> None:
    text = guard.ruleset([network()], 3600)
    iif = 'iifname "br-0123456789ab"'
    assert f"{iif} meta l4proto {{ tcp, udp }} th dport 53 dnat ip to 172.30.0.1" in text
    assert f'{iif} meta nfproto ipv6 counter drop comment "dockyard-dev-a: no IPv6"' in text
    assert (
        f"{iif} ip daddr @n0123456789ab_dns_443 meta l4proto {{ tcp, udp }} th dport 443 accept"
        in text
    )
    assert f"{iif} ip daddr @n0123456789ab_dns_any accept" in text
    assert (
        "set n0123456789ab_net_5432 { type ipv4_addr; flags interval; elements = { 10.0.0.0/8 } }"
        in text
    )
    assert "set n0123456789ab_dns_443 { type ipv4_addr; flags timeout; timeout 3600s; }" in text
    out = text.split("chain egress_out")[1]
    # The final drop comes after every accept of the network.
    assert out.rindex("accept") < out.index(
        'counter drop comment "dockyard-dev-a: not on the allowlist"'
    )
    inbound = text.split("chain egress_in")[1].split("chain egress_out")[0]
    assert f"{iif} ip daddr 172.30.0.1 meta l4proto {{ tcp, udp }} th dport 53 accept" in inbound
    assert "only the DNS forwarder" in inbound


def test_forwarder_only_knows_allowed_names(tmp_path: Path) -> None:
    text = guard.dnsmasq_config(network(), ["10.9.9.9"], tmp_path, log=False)
    lines = text.splitlines()
    assert "no-resolv" in lines
    assert "filter-AAAA" in lines
    assert "listen-address=172.30.0.1" in lines
    assert [line for line in lines if line.startswith("server=")] == [
        "server=/api.anthropic.com/10.9.9.9",
        "server=/pypi.org/10.9.9.9",
    ]
    assert "nftset=/pypi.org/4#inet#dockyard_egress#n0123456789ab_dns_any" in lines


def test_host_upstreams_skip_loopback(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\nsearch x\n")
    assert guard.host_upstreams(str(conf)) == ["10.0.0.2"]


def _net(net_id: str, name: str, driver: str = "bridge", **labels: str) -> dict:
    return {
        "Id": net_id * 8,
        "Name": name,
        "Driver": driver,
        "Options": {"com.docker.network.bridge.name": "docker0"} if name == "bridge" else {},
        "IPAM": {"Config": [{"Subnet": f"172.{len(name)}.0.0/24"}]},
        "Labels": labels,
    }


def _container(name: str, mode: str, *networks: dict) -> dict:
    return {
        "Id": name * 8,
        "Names": [f"/{name}"],
        "HostConfig": {"NetworkMode": mode},
        "NetworkSettings": {"Networks": {n["Name"]: {"NetworkID": n["Id"]} for n in networks}},
    }


def test_the_fence_follows_every_attachment_whatever_its_labels() -> None:
    """Issue 25.1: the broker's internal network (no dockyard label), an extra network,
    the default bridge and a network shared through ``container:`` are all fenced; host
    networking and a driver without a bridge are reported, ``none`` is nothing to fence."""
    own = _net("a1b2", "dockyard-s-a", **{"dockyard.managed": "true"})
    broker = _net("c3d4", "dockyard-s-a-broker")
    extra = _net("e5f6", "anything-added-later")
    default = _net("0a0b", "bridge")
    shared_net = _net("1c1d", "someone-elses")
    host_net, none_net = _net("2e2f", "host", "host"), _net("3a3b", "none", "null")
    macvlan = _net("4c4d", "lan", "macvlan")
    listed = [own, broker, extra, default, shared_net, host_net, none_net, macvlan]
    containers = [
        _container("env", "dockyard-s-a", own, broker, extra),
        _container("plain", "default", default),
        _container(
            "sidecar",
            "container:other",
        ),
        _container("hostnet", "host", host_net),
        _container("isolated", "none", none_net),
        _container("onlan", "lan", macvlan),
    ]
    shared = {"other": _container("other", "someone-elses", shared_net)}
    nets, problems, strays = guard.attached(containers, listed, shared)
    assert strays == []  # no allowlisted environment among them
    assert sorted((n.name, n.bridge) for n in nets) == [
        ("anything-added-later", f"br-{extra['Id'][:12]}"),
        ("bridge", "docker0"),
        ("dockyard-s-a", f"br-{own['Id'][:12]}"),
        ("dockyard-s-a-broker", f"br-{broker['Id'][:12]}"),
        ("someone-elses", f"br-{shared_net['Id'][:12]}"),
    ]
    assert problems == [
        "hostnet: network host (driver host) cannot be fenced (allowed: bridge)",
        "onlan: network lan (driver macvlan) cannot be fenced (allowed: bridge)",
    ]
    # A container whose namespace owner is gone is reported, not skipped silently.
    _, missing, _ = guard.attached([_container("sidecar", "container:gone")], listed, {})
    assert missing == ["sidecar: shares the network of container:gone, which is not found"]


def test_fenced_networks_without_an_ipam_gateway_take_the_engines_default() -> None:
    info = _net("5e5f", "made-by-hand")
    info["IPAM"]["Config"] = [{"Subnet": "fd00:1::/64"}, {"Subnet": "10.9.8.0/24"}]
    (net,), _, _ = guard.attached([_container("c", "made-by-hand", info)], [info])
    assert net.gateway == "10.9.8.1"
    text = guard.ruleset([], 3600, [net], [("gateway", 3128)])
    assert (
        f'iifname "{net.bridge}" ip daddr 10.9.8.1 meta l4proto {{ tcp, udp }} th dport 3128 accept'
        in text
    )
    assert f'iifname "{net.bridge}" counter drop comment "made-by-hand: not the host"' in text
    assert f'iifname "{net.bridge}" ip daddr 169.254.0.0/16 counter drop' in text


def test_an_allowlisted_environment_leaves_only_through_its_allowlist() -> None:
    """On any other network it is attached to (the default bridge sorts first and would
    take its default route), its addresses may reach that bridge's neighbours, nothing
    beyond."""
    own = _net("a1b2", "dockyard-s-a", **{"dockyard.egress": "allowlist"})
    default = _net("0a0b", "bridge")
    env = _container("env", "dockyard-s-a", own, default)
    env["Labels"] = {"dockyard.egress": "allowlist"}
    env["NetworkSettings"]["Networks"]["bridge"].update(
        IPAddress="172.17.0.5", GlobalIPv6Address="fd00:0:0:0::5"
    )
    env["NetworkSettings"]["Networks"]["dockyard-s-a"].update(IPAddress="172.12.0.2")
    _, _, strays = guard.attached([env], [own, default])
    assert [(s.network.name, s.address, s.container) for s in strays] == [
        ("bridge", "172.17.0.5", "env"),
        ("bridge", "fd00::5", "env"),
    ]
    text = guard.ruleset([], 3600, [], (), strays)
    out = text.split("chain egress_out")[1]
    assert (
        'iifname "docker0" oifname != "docker0" ip saddr 172.17.0.5 counter drop '
        'comment "env: allowlisted, not on bridge"' in out
    )
    assert 'iifname "docker0" oifname != "docker0" ip6 saddr fd00::5 counter drop' in out
