"""What the data-plane routers (exec, files, stats) share: the caller's session located in
its tenant (:data:`SessionWorkspace`, one dependency for every route), and blocking service
iterators driven from the event loop.

Streams run in worker threads of their own (:data:`STREAMS`, not the service pool: a
command may stream for an hour without holding a create's thread)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi import Query, Request
from fastapi.responses import StreamingResponse

from ..sessions import dataplane
from .context import Context
from .principal import Acting, OnSession

T = TypeVar("T")
STREAMS = anyio.CapacityLimiter(64)
_END: Any = object()

PathQuery = Annotated[
    str,
    Query(
        description="A path under /workspace: relative to it, or absolute under it. Never "
        "through a symlink; '..' is refused.",
        max_length=dataplane.PATH_MAX,
    ),
]


def streamed(media_type: str) -> dict[str, Any]:
    """A streaming route's declaration (its answer: ``media_type`` as it comes), for
    ``@router.get(path, summary=..., **streamed(...))``."""
    return {
        "response_class": StreamingResponse,
        "responses": {200: {"content": {media_type: {}}}},
    }


def limits(ctx: Context) -> dataplane.Limits:
    return dataplane.Limits(file_bytes=ctx.limits.upload_bytes)


SessionWorkspace = OnSession
"""The session id (path), the tenant (query, admin keys), the caller and the context: what
every data-plane route takes (:class:`.principal.Acting`)."""


async def open_workspace(session: Acting) -> dataplane.Workspace:
    """The session's workspace in the caller's tenant (another tenant's: not found, as a
    missing one); the audit line names the session. Routes call it after checking their
    own input."""
    ctx = session.ctx
    return await ctx.call(ctx.sessions.workspace, session.session_id, session.scope(), limits(ctx))


async def blocking(function: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(function, *args, limiter=STREAMS)


async def iterate(items: Iterator[T], close: Callable[[], None] | None = None) -> AsyncIterator[T]:
    """``items`` pulled one by one in a worker thread. With ``close`` (a call that makes a
    blocked ``next`` return, e.g. closing its socket), a caller going away abandons the
    waiting thread and calls it; without, the pending ``next`` is awaited (it returns
    within a second for exec streams) and the iterator is closed (a command is killed)."""
    try:
        while True:
            item = await anyio.to_thread.run_sync(
                next, items, _END, limiter=STREAMS, abandon_on_cancel=close is not None
            )
            if item is _END:
                return
            yield item
    finally:
        if close is not None:
            close()
        else:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_close, items, limiter=STREAMS)


def _close(items: Iterator[Any]) -> None:
    closer = getattr(items, "close", None)
    if closer is not None:
        closer()


def body_chunks(request: Request) -> Iterator[bytes]:
    """The request body as it arrives, for a worker thread started by :func:`blocking`."""
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = anyio.from_thread.run(stream.__anext__)
        except StopAsyncIteration:
            return
        if chunk:
            yield chunk
