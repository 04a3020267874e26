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
