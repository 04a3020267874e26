"""What the event source and the webhook dispatcher are told by whoever runs the server
(the host's admin): which audit trails to read, how often, and which networks a webhook
may reach besides the public internet.

From the environment (:meth:`EventSettings.from_env`):

- ``DOCKYARD_AUDIT_LOG``: the host scripts' trail (default ``/var/log/dockyard/audit.jsonl``,
  the one :mod:`dockyard.host.audit_trail` writes), read beside the sessions' own trail;
- ``DOCKYARD_API_WEBHOOK_ALLOW_NETWORKS``: comma-separated CIDRs a webhook URL may resolve
  into although they are not public (``10.1.2.0/24,fd00::/8``); empty by default, so no
  tenant can make the server reach loopback, private, link-local or cloud-metadata
  addresses.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInput
from ..host.audit_trail import HOST_LOG

ALLOW_NETWORKS_VARIABLE = "DOCKYARD_API_WEBHOOK_ALLOW_NETWORKS"
HOST_LOG_VARIABLE = "DOCKYARD_AUDIT_LOG"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class EventSettings:
    audit_logs: tuple[tuple[Path, str], ...] = ()
    """The audit trails read, each with the name of its source (``sessions``, ``host``)."""
    poll_s: float = 0.05
    """How often the trails are checked for new lines (a ``stat`` each)."""
    store_poll_s: float = 1.0
    """How often a waiting SSE stream asks the store (events another replica stored)."""
    keepalive_s: float = 15.0
    """An SSE comment line this often keeps proxies from closing an idle stream."""
    streams_per_key: int = 20
    """Event streams one key may hold open at once (then 429)."""
    keep_days: float = 30.0
    """Events (and settled webhook deliveries) older than this are forgotten, checked
    hourly; a stream resuming from an id older than that starts at the oldest kept."""
    ready_poll_s: float = 0.25
    """How often a created, refreshed or restarted session's container is checked until
    it is ready (``session.ready``)."""
    ready_timeout_s: float = 600.0
    """How long it is checked at most (a health check's start period included)."""
    ready_probe: Callable[[str, str | None], str] | None = None
    """Tells whether a session is ready (:data:`dockyard.api.events.Probe`); None: its
    engine's answer (:func:`dockyard.api.events_ready.engine_probe`)."""
    webhook_allow_networks: tuple[Network, ...] = ()
    """Non-public networks webhooks may reach (the admin's allowance)."""
    webhook_attempts: int = 6
    """Attempts per delivery, the first included (then the delivery is ``failed``)."""
    webhook_backoff_s: float = 2.0
    """Wait before the second attempt; doubled for each further one (2, 4, 8, 16, 32 s)."""
    webhook_timeout_s: float = 10.0
    """Per attempt: connect, send and answer."""
    webhooks_per_tenant: int = 20

    @classmethod
    def from_env(
        cls, sessions_log: Path, environ: Mapping[str, str] | None = None
    ) -> EventSettings:
        env = os.environ if environ is None else environ
        host_log = Path(env.get(HOST_LOG_VARIABLE) or HOST_LOG)
        logs = [(sessions_log, "sessions")]
        if host_log != sessions_log:
            logs.append((host_log, "host"))
        return cls(
            audit_logs=tuple(logs),
            webhook_allow_networks=networks(env.get(ALLOW_NETWORKS_VARIABLE, "")),
        )


def networks(text: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, ::1/128"`` -> the networks; every bad entry named at once."""
    found: list[Network] = []
    problems = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            found.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            problems.append(
                f"{ALLOW_NETWORKS_VARIABLE}: {item!r} is not a network "
                "(allowed: CIDRs such as 10.0.0.0/8 or fd00::/8, comma-separated)"
            )
    if problems:
        raise InvalidInput(ALLOW_NETWORKS_VARIABLE, problems)
    return tuple(found)
