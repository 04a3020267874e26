"""Sessions over HTTP: create (the reference request shape), list, get, refresh, destroy.

Handlers parse, call the service layer (:class:`dockyard.sessions.Sessions`) in the
bounded pool, and shape the answer; the caller's tenant comes from its key
(:meth:`Principal.scope`), never from the body for a tenant's key.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from pydantic import BaseModel, Field

from ..errors import InvalidInput
from ..sessions import listing
from ..sessions.status import engine_state
from .principal import Caller, Ctx, Principal, acting_on, mark

router = APIRouter(tags=["sessions"])

SECRET_FIELD = "secretValues"  # noqa: S105 - a field name, not a secret
EXAMPLE = {
    "sessionId": "s1",
    "cwd": "/srv/app",
    "backend": "claude",
    "container": {"ports": [3000]},
    "secrets": ["ANTHROPIC_API_KEY"],
    SECRET_FIELD: {"ANTHROPIC_API_KEY": "<value>"},
}
CreateBody = Annotated[
    dict[str, Any],
    Body(
        description=(
            "The reference request (the body `dockyard up --request` and `dockyard validate "
            "--request` take), unchanged; optionally `secretValues` {NAME: value} for the "
            "names in `secrets` — never logged, never echoed, never stored. A name without a "
            "value here is read from the server's environment (DOCKYARD_TENANT_<TENANT>__NAME "
            "for a tenant)."
        ),
        examples=[EXAMPLE],
    ),
]
TenantQuery = Annotated[
    str | None, Query(description="Admin keys only: the tenant (a tenant key acts as its own).")
]


class Session(BaseModel):
    manifest: dict[str, Any]
    status: str | None = Field(description="The container's state on its engine.")
    health: str | None = Field(description="Its health check's verdict, if it has one.")


class SessionRow(BaseModel):
    sessionId: str
    tenant: str | None
    stack: str
    host: str
    cwd: str
    createdAt: str
    labels: dict[str, str] = Field(default_factory=dict)
    container: str | None = None
    ports: list[dict[str, Any]] = Field(default_factory=list)


class SessionPage(BaseModel):
    items: list[SessionRow]
    total: int
    offset: int
    next: int | None = Field(description="The offset of the next page, if any.")


class Destroyed(BaseModel):
    sessionId: str
    destroyed: bool


def _split_secrets(
    body: dict[str, Any], caller: Principal
) -> tuple[dict[str, Any], dict[str, str] | None]:
    request = {k: v for k, v in body.items() if k != SECRET_FIELD}
    values = body.get(SECRET_FIELD)
    problems = []
    if values is not None and not (
        isinstance(values, dict) and all(isinstance(v, str) for v in values.values())
    ):
        # Never the value: it is a secret.
        problems.append(
            f"request.{SECRET_FIELD}: not a mapping of names to strings "
            "(allowed: {NAME: value} for names in request.secrets)"
        )
    if not caller.admin:
        asked = request.get("tenant")
        if asked is not None and asked != caller.tenant:
            problems.append(
                f"request.tenant: {asked!r} is not this key's tenant (allowed: {caller.tenant!r} "
                "or leave it out)"
            )
        request["tenant"] = caller.tenant
    if problems:
        raise InvalidInput("request", problems)
    return request, values


@router.post("/api/sessions/create", status_code=201, summary="Create a session (reference)")
@router.post("/api/sessions", status_code=201, summary="Create a session")
async def create(body: CreateBody, request: Request, caller: Caller, ctx: Ctx) -> dict[str, Any]:
    """Create the session (or converge it if it exists) and answer its manifest."""
    session_request, values = _split_secrets(body, caller)
    mark(request, str(session_request.get("sessionId")), session_request.get("tenant"))
    return dict(await ctx.call(ctx.sessions.create, session_request, values))


PAGE_FIELDS = tuple(SessionRow.model_fields)
_pages: listing.Coalesced[bytes] = listing.Coalesced()
"""Identical lists at once (same tenant scope and filters) share one read and one encoding,
never an older one: :class:`dockyard.sessions.listing.Coalesced`."""


def _encoded(found: listing.Page) -> bytes:
    """The answer (:class:`SessionPage`) as JSON: the rows are the service layer's own (no
    client input), so they are neither validated nor encoded again per request: the
    pydantic round trip was most of the server's CPU under 200 concurrent lists of 100
    (docs/performance.md, api)."""
    defaults = {"labels": {}, "container": None, "ports": []}
    items = [{f: row.get(f, defaults.get(f)) for f in PAGE_FIELDS} for row in found.rows]
    page = {"items": items, "total": found.total, "offset": found.offset, "next": found.next}
    return json.dumps(page, ensure_ascii=False, separators=(",", ":")).encode()


@router.get("/api/sessions", summary="List sessions", response_model=SessionPage)
async def list_sessions(
    caller: Caller,
    ctx: Ctx,
    tenant: TenantQuery = None,
    label: Annotated[
        list[str] | None, Query(description="KEY or KEY=VALUE; repeat: all must match.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    scope = caller.scope(tenant)
    wanted = tuple(label or ())

    def read() -> bytes:
        return _encoded(listing.page(ctx.sessions, scope, wanted, offset, limit))

    # The answer depends on the scope and filters only, never on which key asked.
    data = await _pages((id(ctx), scope, wanted, offset, limit), lambda: ctx.call(read))
    return Response(data, media_type="application/json")


@router.get("/api/sessions/{session_id}", summary="A session: manifest, status, health")
async def get(
    session_id: str, request: Request, caller: Caller, ctx: Ctx, tenant: TenantQuery = None
) -> Session:
    scope = acting_on(request, caller, session_id, tenant)

    def read() -> Session:
        record = ctx.sessions.registry.find(session_id, scope)
        manifest = ctx.sessions.get(session_id, scope)
        state = engine_state(manifest["container"]["id"], record.host)
        return Session(manifest=dict(manifest), **state)

    return await ctx.call(read)


@router.post("/api/sessions/{session_id}/refresh", summary="Recreate a session's container")
async def refresh(
    session_id: str,
    request: Request,
    caller: Caller,
    ctx: Ctx,
    tenant: TenantQuery = None,
    secrets: Annotated[dict[str, str] | None, Body(alias=SECRET_FIELD, embed=True)] = None,
) -> dict[str, Any]:
    """Recreate the container, keeping the workspace; answers the new manifest."""
    scope = acting_on(request, caller, session_id, tenant)
    return dict(await ctx.call(ctx.sessions.refresh, session_id, scope, secrets))


@router.delete("/api/sessions/{session_id}", summary="Destroy a session")
async def destroy(
    session_id: str,
    request: Request,
    caller: Caller,
    ctx: Ctx,
    tenant: TenantQuery = None,
    final_backup: Annotated[bool, Query(alias="finalBackup")] = True,
) -> Destroyed:
    scope = acting_on(request, caller, session_id, tenant)
    await ctx.call(ctx.sessions.destroy, session_id, scope, final_backup=final_backup)
    return Destroyed(sessionId=session_id, destroyed=True)
