"""What E2B knows of a sandbox and dockyard does not (issue 30): one record per sandbox
under ``<state>/e2b/`` (mode 0600, written whole, removed with the session) — the template
id, the metadata as given, the deadline and the access token — and the answers the SDKs
read of it, with its state and limits read from the session (:class:`Sandbox`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import pause as pausing
from .registry import Record, SessionNotFound
from .service import SessionsLike
from .status import engine_state

TOKEN_SECRET = "DOCKYARD_ENVD_ACCESS_TOKEN"  # noqa: S105 - a secret's name, not its value
"""The secret the daemon (images/core/envd.py) reads its access token from."""
ENVD_VERSION_VARIABLE = "DOCKYARD_E2B_ENVD_VERSION"
ENVD_VERSION = "0.6.4"
"""The daemon protocol version answered (the SDKs gate features on it): the lowest E2B envd
version whose features images/core/envd.py has — file metadata (0.6.2), EntryInfo in watch
events (0.6.3), watches refusing network mounts unless allowed (0.6.4)."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Sandbox:
    """What E2B knows of one sandbox (the session holds everything else)."""

    sandboxId: str
    tenant: str | None
    templateID: str
    startedAt: str
    endAt: str | None
    """None while paused (a paused sandbox does not expire)."""
    timeout: int
    metadata: dict[str, str] = field(default_factory=dict)
    envdAccessToken: str = ""
    autoPause: bool = False
    """At its deadline it is paused (E2B's ``onTimeout: "pause"``), not killed."""
    autoResume: bool = False
    """A routed call wakes it while it is paused through E2B (``lifecycle.autoResume``;
    E2B's default is False: a paused sandbox answers 409 until connect)."""

    def answer(self, domain: str | None) -> dict[str, Any]:
        """The SDKs' ``Sandbox`` object (create and connect answer it)."""
        return {
            "sandboxID": self.sandboxId,
            "templateID": self.templateID,
            "clientID": "dockyard",
            "envdVersion": os.environ.get(ENVD_VERSION_VARIABLE) or ENVD_VERSION,
            "envdAccessToken": self.envdAccessToken,
            "domain": domain,
        }

    def detail(self, state: str, domain: str | None, limits: Mapping[str, Any]) -> dict[str, Any]:
        """The SDKs' ``SandboxDetail`` / ``ListedSandbox`` object."""
        return {
            **self.answer(domain),
            "alias": self.templateID,
            "startedAt": self.startedAt,
            "endAt": self.endAt or self.startedAt,
            "cpuCount": int(limits.get("cpus") or 0),
            "memoryMB": int(limits.get("memory") or 0),
            "diskSizeMB": 0,
            "state": state,
            "metadata": dict(self.metadata),
        }


def directory(sessions: SessionsLike) -> Path:
    return sessions.where.state / "e2b"


def request_of(
    sessions: SessionsLike,
    sandbox_id: str,
    tenant: str | None,
    environment: Mapping[str, str | None],
    labels: Mapping[str, str],
    secret_names: list[str],
) -> dict[str, Any]:
    """The sessions request of a sandbox (a cold create's, or a warm pool member's):
    ``environment`` gives ``backend`` and, where set, ``variant`` and ``profile``; every
    sandbox of a tenant shares one project directory."""
    cwd = directory(sessions) / "projects" / (tenant or "_")
    cwd.mkdir(parents=True, exist_ok=True, mode=0o700)
    request: dict[str, Any] = {"sessionId": sandbox_id, "cwd": str(cwd), "labels": dict(labels)}
    if tenant:
        request["tenant"] = tenant
    request.update({k: v for k, v in environment.items() if v})
    request["secrets"] = sorted(secret_names)
    return request


def path_of(sessions: SessionsLike, record: Record) -> Path:
    return directory(sessions) / f"{record.stack_name}.json"


def forget(state: Path, stack_name: str) -> None:
    """Remove the E2B record of the session ``stack_name`` (if it was a sandbox):
    :meth:`Sessions.destroy` calls it, so however a session goes (E2B kill, dockyard's API
    or CLI, the idle monitor) its token and deadline go with it and never apply to a later
    session of the same id."""
    (state / "e2b" / f"{stack_name}.json").unlink(missing_ok=True)


def save(sessions: SessionsLike, stack_name: str, sandbox: Sandbox) -> None:
    folder = directory(sessions)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    final = folder / f"{stack_name}.json"
    temporary = folder / f".{stack_name}.{secrets.token_hex(4)}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(asdict(sandbox), handle, sort_keys=True)
    temporary.replace(final)


def load(sessions: SessionsLike, record: Record) -> Sandbox | None:
    try:
        data = json.loads(path_of(sessions, record).read_text(encoding="utf-8"))
        return Sandbox(**data)
    except (OSError, ValueError, TypeError):
        return None


def found(sessions: SessionsLike, sandbox_id: str, tenant: str | None) -> tuple[Record, Sandbox]:
    """The sandbox's session record and E2B record; a session that is not a sandbox, another
    tenant's, or a missing one answer the same not-found."""
    missing = SessionNotFound(f"no sandbox {sandbox_id!r} on this host")
    try:
        record = sessions.registry.find(sandbox_id, tenant)
    except SessionNotFound:
        raise missing from None
    sandbox = load(sessions, record)
    if sandbox is None or sandbox.tenant != record.tenant:
        raise missing
    return record, sandbox


def state_of(record: Record, sessions: SessionsLike) -> str:
    try:
        manifest = json.loads(Path(record.manifest_path).read_text(encoding="utf-8"))
        status = engine_state(str(manifest["container"]["id"]), record.host)["status"]
    except (OSError, ValueError, KeyError, TypeError):
        return "running"
    return "paused" if status == pausing.PAUSED else "running"


def limits_of(sessions: SessionsLike, record: Record) -> dict[str, Any]:
    try:
        planned = pausing.plan_of(sessions, record)
        limits = planned.config.limits_of(planned.environment)
        return {"cpus": limits.cpus, "memory": limits.memory}
    except Exception:  # a record the settings no longer accept: answer without limits
        return {}
