"""Egress allowlist entries as configuration: presets, domains, IPv4 addresses/CIDRs, each
with an optional port, parsed and expanded when a stack or request is validated. The
program writes the expanded, normalised list onto the environment network's labels
(:mod:`dockyard.egress`); the host's egress_guard role reads them there and enforces them
outside the container (see docs/egress.md).

Normalised forms (what the label carries):
  ``api.anthropic.com:443``   a domain and its subdomains, one port
  ``pypi.org``                a domain and its subdomains, any port
  ``10.20.0.0/16:5432``       an IPv4 network, one port
  ``192.0.2.7/32``            an IPv4 address, any port
"""

from __future__ import annotations

import ipaddress
import re

from ..errors import InvalidInput

MODES = ("open", "allowlist")

PRESETS: dict[str, tuple[str, ...]] = {
    "anthropic": (
        "api.anthropic.com:443",
        "statsig.anthropic.com:443",
        "console.anthropic.com:443",
        "claude.ai:443",
    ),
    "openai": ("api.openai.com:443", "auth.openai.com:443", "chatgpt.com:443"),
    "github": (
        "github.com:443",
        "github.com:22",
        "api.github.com:443",
        "codeload.github.com:443",
        "githubusercontent.com:443",
        "ghcr.io:443",
    ),
    "npm": ("registry.npmjs.org:443",),
    "pypi": ("pypi.org:443", "files.pythonhosted.org:443"),
    "debian": ("deb.debian.org:80", "deb.debian.org:443", "security.debian.org:80"),
}

DOMAIN = re.compile(
    r"(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}", re.ASCII
)
ALLOWED = (
    f"a preset ({', '.join(PRESETS)}), a domain (covers its subdomains), or an IPv4 "
    "address or CIDR, each optionally with :port (1-65535); IPv6 is always blocked"
)


class EgressError(InvalidInput, ValueError):
    """An entry that is not allowed; the message says what is."""


def normalise(entry: object) -> list[str]:
    """One entry -> its normalised rules (a preset gives several)."""
    if not isinstance(entry, str) or not entry or entry != entry.strip():
        raise EgressError(ALLOWED)
    if entry in PRESETS:
        return list(PRESETS[entry])
    host, port = entry, None
    if entry.count(":") == 1:
        host, _, port_text = entry.partition(":")
        if not re.fullmatch(r"[0-9]{1,5}", port_text, re.ASCII) or not 1 <= int(port_text) <= 65535:
            raise EgressError(ALLOWED)
        port = int(port_text)
    elif ":" in entry:
        raise EgressError(ALLOWED)  # IPv6 literals: IPv6 egress is blocked outright
    suffix = "" if port is None else f":{port}"
    if re.fullmatch(r"[0-9./]+", host, re.ASCII):
        try:
            network = ipaddress.IPv4Network(host, strict=False)
        except ValueError:
            raise EgressError(ALLOWED) from None
        if network.prefixlen == 0:
            raise EgressError(ALLOWED + "; not 0.0.0.0/0 (that is egress: open)")
        return [f"{network.with_prefixlen}{suffix}"]
    if len(entry) > 260 or not DOMAIN.fullmatch(host):
        raise EgressError(ALLOWED)
    return [f"{host}{suffix}"]


def is_address(rule: str) -> bool:
    """A normalised rule names an IPv4 address or network (not a domain)."""
    host = rule.rsplit(":", 1)[0] if rule.count(":") == 1 else rule
    return bool(re.fullmatch(r"[0-9./]+", host, re.ASCII))


def expand(entries: list[object]) -> list[str]:
    """Every entry normalised, presets expanded, duplicates dropped, order kept."""
    rules: list[str] = []
    for entry in entries:
        for rule in normalise(entry):
            if rule not in rules:
                rules.append(rule)
    return rules
