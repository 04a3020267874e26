"""A session's stats (status, age, memory, CPU, disk), its container's logs (tail,
follow) and its published ports."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from .workspace import SessionWorkspace, iterate, open_workspace, streamed

router = APIRouter(tags=["stats"])


class Stats(BaseModel):
    status: str | None = Field(description="The container's state on its engine.")
    health: str | None
    startedAt: str | None
    createdAt: str | None
    ageSeconds: float | None
    memory: dict[str, Any] = Field(description="used, limit (bytes) and percent.")
    cpu: dict[str, Any] = Field(description="percent (of one CPU times online CPUs), onlineCpus.")
    pids: int | None
    disk: dict[str, Any] = Field(description="The workspace's total, used, available, percent.")


class Port(BaseModel):
    containerPort: int
    hostPort: int
    previewUrl: str | None = Field(
        default=None,
        description="Where the preview proxy serves it (with the session's token), when the "
        "server knows the proxy's domain ($DOCKYARD_PREVIEW_DOMAIN).",
    )


class Ports(BaseModel):
    host: str = Field(description="The engine the ports are published on (local or ssh://…).")
    ports: list[Port]


@router.get("/api/sessions/{session_id}/stats", summary="Status, age, memory, CPU, disk")
async def stats(session: SessionWorkspace) -> Stats:
    workspace = await open_workspace(session)
    return Stats(**await session.ctx.call(workspace.stats))


@router.get(
    "/api/sessions/{session_id}/logs",
    summary="The container's output (tail, follow)",
    **streamed("application/octet-stream"),
)
async def logs(
    session: SessionWorkspace,
    tail: Annotated[int | None, Query(ge=0, le=100000, description="Last N lines.")] = None,
    follow: Annotated[bool, Query(description="Keep the stream open for new output.")] = False,
) -> StreamingResponse:
    """The bytes as the container wrote them (the agent's: never interpreted)."""
    workspace = await open_workspace(session)
    lines, close = await session.ctx.call(workspace.logs, tail, follow)
    return StreamingResponse(
        iterate(lines, close),
        media_type="application/octet-stream",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/api/sessions/{session_id}/ports", summary="Published ports")
async def ports(session: SessionWorkspace) -> Ports:
    workspace = await open_workspace(session)
    return Ports(**await session.ctx.call(workspace.ports))
