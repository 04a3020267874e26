"""A session's published ports, each with its preview URL as the preview proxy names it
(roles/preview_proxy)."""

from __future__ import annotations

import os
import re
from typing import Any

from ..errors import InvalidInput
from . import located
from .workspace_container import Container

PREVIEW_DOMAIN_VARIABLE = "DOCKYARD_PREVIEW_DOMAIN"
# The preview proxy's own rules for a host name (roles/preview_proxy).
DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
PREVIEW_DOMAIN = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}", re.ASCII
)


class PortsVerbs(Container):
    """Ports."""

    def ports(self, preview_domain: str | None = None) -> dict[str, Any]:
        """The published ports; with the preview proxy's domain (``preview_domain``, else
        ``$DOCKYARD_PREVIEW_DOMAIN``: roles/preview_proxy's ``preview_proxy_domain``),
        each one's preview URL as that proxy names it (it needs the session's token)."""
        inspected = self.api.inspect_container(self.container)
        engine = located.published(inspected)
        domain = preview_domain or os.environ.get(PREVIEW_DOMAIN_VARIABLE) or None
        if domain is not None and not PREVIEW_DOMAIN.fullmatch(domain):
            raise InvalidInput(
                "preview",
                [f"{PREVIEW_DOMAIN_VARIABLE}: {domain!r} is not a domain (allowed: a.example)"],
            )
        session = self.record.session_id
        rows = []
        for port, host_port in sorted(engine.items()):
            row: dict[str, Any] = {"containerPort": port, "hostPort": host_port}
            if domain and DNS_LABEL.fullmatch(session):
                row["previewUrl"] = f"https://{port}-{session}.{domain}/"
            rows.append(row)
        return {"host": self.record.host, "ports": rows}
