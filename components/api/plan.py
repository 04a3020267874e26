"""The reference app's Modal preview: ``GET /api/cloud/providers/modal/plan?cwd&sessionId``
(what ``dockyard plan modal`` prints for the session's manifest, with the session's own
limits and GPU request). Creates nothing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from .. import modal_plan
from ..sessions import registry
from .principal import Caller, Ctx, acting_on

router = APIRouter(tags=["plan"])


class ModalPlan(BaseModel):
    sessionId: str
    cwd: str
    plan: str
    """Python source of the equivalent ``modal.Sandbox.create`` call, with notes."""


@router.get("/api/cloud/providers/modal/plan", summary="Preview a session as a Modal sandbox")
async def modal(
    request: Request,
    caller: Caller,
    ctx: Ctx,
    cwd: Annotated[str, Query(description="The session's project directory.")],
    session_id: Annotated[str, Query(alias="sessionId")],
    tenant: Annotated[str | None, Query(description="Admin keys only.")] = None,
) -> ModalPlan:
    scope = acting_on(request, caller, session_id, tenant)

    def preview() -> ModalPlan:
        record = ctx.sessions.registry.find(session_id, scope)
        if record.cwd != cwd:
            # A session of another project answers as one that does not exist.
            where = f" of tenant {scope}" if scope else ""
            raise registry.SessionNotFound(
                f"no session {session_id!r}{where} in {cwd!r} on this machine"
            )
        manifest = ctx.sessions.get(session_id, scope)
        names = [n for n in record.request.get("secrets") or [] if isinstance(n, str)]
        planned, _ = ctx.sessions.plan(record.request, dict.fromkeys(names, ""), record.naming)
        limits = planned.config.limits_of(planned.environment)
        text = modal_plan.plan(dict(manifest), limits.cpus, limits.memory, planned.environment.gpu)
        return ModalPlan(sessionId=session_id, cwd=cwd, plan=text)

    return await ctx.call(preview)
