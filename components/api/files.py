"""A session's workspace files: download, upload (both streamed), list, stat, remove.

Every path is under /workspace and is walked inside the container without following any
link (:mod:`dockyard.sessions.workspace_helper`); uploads are bounded by
``Limits.upload_bytes`` (413 past it, nothing written)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from ..errors import InvalidInput
from .workspace import (
    PathQuery,
    SessionWorkspace,
    blocking,
    body_chunks,
    iterate,
    open_workspace,
    streamed,
)

router = APIRouter(tags=["files"])


class Entry(BaseModel):
    name: str
    type: str = Field(description="file, directory, symlink or other (never followed).")
    size: int
    mode: str | None = Field(description="Permission bits, octal.")
    mtime: float | None
    target: str | None = Field(default=None, description="A symlink's target, as text.")
    path: str | None = None


class Listing(BaseModel):
    path: str
    entries: list[Entry]
    truncated: bool = Field(description="True when there were more than `limit` entries.")


class Written(BaseModel):
    path: str
    size: int


class Removed(BaseModel):
    path: str
    removed: str


def _mode(value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise InvalidInput("mode", [f"mode: {value!r} (allowed: octal 0 to 777, e.g. 644)"])
    return mode


@router.get(
    "/api/sessions/{session_id}/files",
    summary="Download a file (streamed)",
    **streamed("application/octet-stream"),
)
async def download(session: SessionWorkspace, path: PathQuery) -> StreamingResponse:
    workspace = await open_workspace(session)
    size, content = await blocking(workspace.read, path)
    return StreamingResponse(
        iterate(content),
        media_type="application/octet-stream",
        headers={"Content-Length": str(size), "Cache-Control": "no-store"},
    )


@router.put("/api/sessions/{session_id}/files", summary="Upload a file (streamed)")
async def upload(
    session: SessionWorkspace,
    path: PathQuery,
    request: Request,
    parents: Annotated[bool, Query(description="Create missing directories.")] = False,
    mode: Annotated[str, Query(description="Permission bits, octal.")] = "644",
) -> Written:
    """The request body is the file's content; it replaces the file atomically when
    complete (a link at that name is replaced, never written through)."""
    bits = _mode(mode)
    workspace = await open_workspace(session)
    written: dict[str, Any] = await blocking(
        lambda: workspace.write(path, body_chunks(request), parents=parents, mode=bits)
    )
    return Written(**written)


@router.delete("/api/sessions/{session_id}/files", summary="Remove a file or directory")
async def remove(
    session: SessionWorkspace,
    path: PathQuery,
    recursive: Annotated[bool, Query(description="Remove a directory and its content.")] = False,
) -> Removed:
    workspace = await open_workspace(session)
    return Removed(**await session.ctx.call(workspace.remove, path, recursive))


@router.get("/api/sessions/{session_id}/files/list", summary="List a directory")
async def listing(
    session: SessionWorkspace,
    path: PathQuery = ".",
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> Listing:
    workspace = await open_workspace(session)
    return Listing(**await session.ctx.call(workspace.list, path, limit))


@router.get("/api/sessions/{session_id}/files/stat", summary="A file's type, size, mode")
async def stat(session: SessionWorkspace, path: PathQuery) -> Entry:
    workspace = await open_workspace(session)
    return Entry(**await session.ctx.call(workspace.stat, path))
