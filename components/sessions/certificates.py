"""SSH certificates for a session (``dockyard ssh``): signed by the CA of the session's
stack configuration (one per tenant, else ``sessions``), bound to the caller's key and the
session, valid for minutes; each issue is audited as ``ssh-certificate`` with what was
issued (key id, principal, minutes), never key material."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .. import ssh
from ..manifest import Manifest
from . import audit, hibernate
from .registry import Record
from .request import SESSIONS_STACK
from .service import SessionsLike


@dataclass(frozen=True)
class Access:
    """What ``ssh`` connects with."""

    certificate: ssh.Certificate
    port: int
    """The host port the session's sshd is published on."""
    known_hosts: Path
    """The sessions' known-hosts file (host keys are pinned there)."""


class Locating(SessionsLike, Protocol):
    """What :func:`proxy_port` needs of :class:`dockyard.sessions.Sessions`."""

    def get(self, session: str, tenant: str | None = None) -> Manifest: ...

    def locate(self, session: str, tenant: str | None = None) -> tuple[Record, Manifest]: ...


WOKEN_BY_CONNECTION = "ssh connection"


def proxy_port(sessions: Locating, session: str, tenant: str | None) -> int:
    """For ``dockyard ssh-proxy`` (ssh's ``ProxyCommand``): the host port of the session's
    sshd, the session woken first if it is paused or hibernated (audited ``resume``,
    ``woken by ssh connection``), then checked against its engine like every host tool's.
    Another tenant's session is missing (:class:`.SessionNotFound`)."""
    record = sessions.registry.find(session, tenant)
    ssh.host_port(dict(sessions.get(session, tenant)))  # no sshd: say so before any wake
    hibernate.wake_if_suspended(sessions, record, WOKEN_BY_CONNECTION)
    _, manifest = sessions.locate(session, tenant)
    return ssh.host_port(dict(manifest))


def issue(
    sessions: SessionsLike,
    record: Record,
    manifest: Manifest,
    public_key: Path,
    minutes: int,
) -> Access:
    """A certificate for ``public_key`` on the located session (``Sessions.locate``: the
    record and the manifest checked against the engine)."""
    port = ssh.host_port(dict(manifest))
    # Wake on SSH: the certificate's holder connects next; a frozen sshd would not answer.
    hibernate.wake_if_suspended(sessions, record, "ssh certificate")
    with audit.recorded(
        sessions.where.audit_log,
        "ssh-certificate",
        session=record.session_id,
        tenant=record.tenant,
        host=record.host,
        stack=record.stack_name,
    ) as entry:
        cert = ssh.issue(
            record.tenant or SESSIONS_STACK,
            record.session_id,
            public_key,
            minutes,
            caller=audit.actor(),
        )
        # The audit line's free-text field: what was issued, never key material.
        entry["detail"] = f"key id {cert.key_id}, principal {cert.principal}, {cert.minutes} min"
    return Access(cert, port, sessions.where.state / "ssh_known_hosts")
