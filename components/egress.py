"""The egress labels of an environment's network: what the host's egress_guard role acts on.

Allowlist entries are parsed, normalised and expanded by the configuration
(:mod:`dockyard.config.egress`, re-exported here); this module turns the expanded rules
into the network's labels (docs/egress.md).
"""

from __future__ import annotations

import json

from .config.egress import (
    ALLOWED,
    DOMAIN,
    MODES,
    PRESETS,
    EgressError,
    expand,
    is_address,
    normalise,
)
from .contract import LABEL_EGRESS as LABEL_MODE
from .contract import LABEL_EGRESS_ALLOW as LABEL_ALLOW

__all__ = [
    "ALLOWED",
    "DOMAIN",
    "LABEL_ALLOW",
    "LABEL_MODE",
    "MODES",
    "PRESETS",
    "EgressError",
    "expand",
    "is_address",
    "labels",
    "normalise",
]


def labels(mode: str, rules: list[str]) -> dict[str, str]:
    """The network labels the host's egress guard acts on."""
    if mode == "open":
        return {LABEL_MODE: "open"}
    return {LABEL_MODE: "allowlist", LABEL_ALLOW: json.dumps(rules, separators=(",", ":"))}
