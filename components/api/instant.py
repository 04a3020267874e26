"""Instant sessions over HTTP (issue 29): pause, resume, hibernate, snapshots and forks.

Handlers parse, call the service layer (:meth:`Sessions.pause`, ``resume``, ``hibernate``,
``snapshot``, ``snapshots``, ``remove_snapshot``, ``fork``) in the bounded pool and shape
the answer; the caller's tenant comes from its key, so another tenant's session or
snapshot is a 404 like a missing one. Pausing a paused session (or resuming a running one) answers 200 with
``changed: false``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field

from .principal import Caller, Ctx, OnSession, TenantQuery, acting_on

router = APIRouter(tags=["instant sessions"])


class SessionState(BaseModel):
    sessionId: str
    status: str = Field(description="paused, running or hibernated, after the call.")
    changed: bool = Field(description="False: it already was (the call changed nothing).")
    detail: str | None = Field(
        default=None,
        description="How a resume from hibernation went: restored from its checkpoint, or "
        "started cold (with its workspace) and why. Absent otherwise.",
    )


class Snapshot(BaseModel):
    name: str
    tenant: str | None
    session: str = Field(description="The session it was taken of.")
    kind: str = Field(description="snapshot (image and volumes), or fork (a fork's image).")
    image: str
    imageId: str
    volumes: list[str]
    createdAt: str
    host: str


class SnapshotBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="The session id grammar; unique within the tenant.")


class ForkBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    as_: str = Field(alias="as", description="The new session's id.")
    snapshot: str | None = Field(
        default=None, description="Fork from this snapshot (default: one taken now)."
    )
    secretValues: dict[str, str] | None = Field(
        default=None,
        description="Values for the secret names of the parent's request (never stored).",
    )


def _state_route(verb: str, summary: str, description: str | None = None) -> None:
    """``POST /api/sessions/{session_id}/<verb>``: the service's ``verb`` on the session in
    the bounded pool, answered with the session's state after it."""

    async def route(session: OnSession) -> SessionState:
        state = await session.call(getattr(session.ctx.sessions, verb))
        return SessionState(**state.as_dict())

    router.post(
        f"/api/sessions/{{session_id}}/{verb}",
        summary=summary,
        description=description,
        name=verb,
        response_model_exclude_none=True,
    )(route)


_state_route("pause", "Pause a session (memory kept)")
_state_route("resume", "Resume a paused or hibernated session")
_state_route(
    "hibernate",
    "Hibernate a session (memory checkpointed to disk, container stopped)",
    "Where the host cannot checkpoint (no working CRIU, engine not experimental): 409\n"
    "saying what was measured and what to do. `resume` restores a hibernated session.",
)


@router.post(
    "/api/sessions/{session_id}/snapshots",
    status_code=201,
    summary="Snapshot a session (container layer and volumes)",
)
async def snapshot(session: OnSession, body: SnapshotBody) -> Snapshot:
    taken = await session.call(session.ctx.sessions.snapshot, body.name)
    return Snapshot(**taken.as_dict())


@router.post(
    "/api/sessions/{session_id}/fork",
    status_code=201,
    summary="Fork a session: a new one with its files and packages, its own identity",
)
async def fork(session: OnSession, body: Annotated[ForkBody, Body()]) -> dict[str, Any]:
    """Answers the new session's manifest."""
    manifest = await session.call(
        session.ctx.sessions.fork, body.as_, snapshot=body.snapshot, secrets=body.secretValues
    )
    return dict(manifest)


@router.get("/api/snapshots", summary="List snapshots")
async def list_snapshots(caller: Caller, ctx: Ctx, tenant: TenantQuery = None) -> list[Snapshot]:
    scope = caller.scope(tenant)
    found = await ctx.call(ctx.sessions.snapshots, scope)
    return [Snapshot(**s.as_dict()) for s in found]


@router.delete("/api/snapshots/{name}", summary="Remove a snapshot")
async def remove_snapshot(
    name: str, request: Request, caller: Caller, ctx: Ctx, tenant: TenantQuery = None
) -> Snapshot:
    scope = acting_on(request, caller, None, tenant)
    removed = await ctx.call(ctx.sessions.remove_snapshot, name, scope)
    return Snapshot(**removed.as_dict())
