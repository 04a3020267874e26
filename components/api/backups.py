"""A session's workspace backups and the audit trail over HTTP: the faces of the verbs the
CLI's ``backup``, ``snapshots``, ``restore`` and ``audit`` call
(:mod:`dockyard.sessions.backups`, :mod:`dockyard.sessions.audit`).

Handlers parse, call the service layer in the bounded pool and shape the answer. The
session a backup verb acts on is found by :func:`dockyard.sessions.backups.target` in the
caller's tenant (a tenant key's own), so another tenant's session answers exactly like one
that does not exist. A tenant key reads only its tenant's audit lines; an admin key may
name a tenant, or none (every line). Errors are the service layer's kinds
(:mod:`dockyard.api.errors` maps them to HTTP); the backup and restore themselves are
audited by the service layer, the request by the middleware.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from ..sessions import audit as audit_log
from ..sessions import backups as backup_sessions
from .principal import Caller, Ctx, acting_on

router = APIRouter()

TenantQuery = Annotated[
    str | None, Query(description="Admin keys only: the tenant (a tenant key acts as its own).")
]


class BackupResult(BaseModel):
    session: str
    stack: str
    snapshot: str = Field(description="The new snapshot's id.")
    reason: str
    files: int
    bytes: int
    added_bytes: int = Field(description="Bytes this backup added to the repository.")
    seconds: float


class BackupSnapshot(BaseModel):
    id: str
    short_id: str
    time: str
    tags: list[str]


class RestoreBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    snapshot: str = Field(default="latest", description="A snapshot id (prefix) or latest.")
    into: str | None = Field(
        default=None,
        description="Restore into this session's workspace (same tenant) instead of the "
        "session's own; both must use the same backup credentials directory.",
    )
    force: bool = Field(
        default=False,
        description="Replace a non-empty workspace (its content is backed up first).",
    )


class RestoreResult(BaseModel):
    session: str = Field(description="The session whose workspace was written.")
    stack: str
    source: str = Field(description="stack/session whose repository the snapshot came from.")
    snapshot: str
    files: int
    bytes: int
    seconds: float
    previous_snapshot: str | None = Field(
        default=None, description="With force over a non-empty workspace: what was there."
    )


class AuditLine(BaseModel):
    """One line of the audit trail (names and numbers only, never a secret)."""

    model_config = ConfigDict(extra="allow")
    time: str
    actor: str | None = None
    action: str
    session: str | None = None
    tenant: str | None = None
    result: str | None = None
    duration_ms: int | None = None
    detail: str | None = None


@router.post(
    "/api/sessions/{session_id}/backups",
    status_code=201,
    summary="Back the session's workspace up now",
    tags=["backups"],
)
async def backup_now(
    session_id: str, request: Request, caller: Caller, ctx: Ctx, tenant: TenantQuery = None
) -> BackupResult:
    scope = acting_on(request, caller, session_id, tenant)
    who = await ctx.call(backup_sessions.target, ctx.sessions, session_id, scope)
    result = await ctx.call(backup_sessions.run_backup, ctx.sessions, who)
    return BackupResult(**backup_sessions.as_dict(result))


@router.get(
    "/api/sessions/{session_id}/backups",
    summary="List the session's backups, oldest first",
    tags=["backups"],
)
async def list_backups(
    session_id: str, request: Request, caller: Caller, ctx: Ctx, tenant: TenantQuery = None
) -> list[BackupSnapshot]:
    scope = acting_on(request, caller, session_id, tenant)
    who = await ctx.call(backup_sessions.target, ctx.sessions, session_id, scope)
    found = await ctx.call(backup_sessions.snapshots, who)
    return [BackupSnapshot(**backup_sessions.as_dict(s)) for s in found]


@router.post(
    "/api/sessions/{session_id}/restore",
    summary="Restore a backup into the session's workspace (or another's), verified",
    tags=["backups"],
)
async def restore(
    session_id: str,
    request: Request,
    caller: Caller,
    ctx: Ctx,
    body: Annotated[RestoreBody | None, Body()] = None,
    tenant: TenantQuery = None,
) -> RestoreResult:
    asked = body or RestoreBody()
    scope = acting_on(request, caller, session_id, tenant)
    who = await ctx.call(backup_sessions.target, ctx.sessions, session_id, scope)
    into = None
    if asked.into is not None:
        into = await ctx.call(backup_sessions.target, ctx.sessions, asked.into, scope)
    result = await ctx.call(
        backup_sessions.restore, ctx.sessions, who, asked.snapshot, into, asked.force
    )
    return RestoreResult(**backup_sessions.as_dict(result))


@router.get("/api/audit", summary="Read the audit trail, oldest first", tags=["audit"])
async def read_audit(
    request: Request,
    caller: Caller,
    ctx: Ctx,
    session: Annotated[str | None, Query(description="Only this session.")] = None,
    action: Annotated[
        str | None, Query(description="Only this action (create, backup, api...).")
    ] = None,
    since: Annotated[
        AwareDatetime | None, Query(description="Only lines at or after this time (ISO 8601).")
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=10_000, description="At most this many lines: the newest.")
    ] = 1000,
    tenant: TenantQuery = None,
) -> list[AuditLine]:
    scope = acting_on(request, caller, session, tenant)
    entries = await ctx.call(
        audit_log.read,
        ctx.sessions.where.audit_log,
        session=session,
        tenant=scope,
        action=action,
        since=since,
        limit=limit,
    )
    return [AuditLine(**e) for e in entries]
