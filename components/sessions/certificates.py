"""SSH certificates for a session (``dockyard ssh``): signed by the CA of the session's
stack configuration (one per tenant, else ``sessions``), bound to the caller's key and the
session, valid for minutes; each issue is audited as ``ssh-certificate`` with what was
issued (key id, principal, minutes), never key material."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
