"""What the data-plane routers (exec, files, stats) share: the caller's session located in
its tenant (:data:`SessionWorkspace`, one dependency for every route), and blocking service
iterators driven from the event loop.

Streams run in worker threads of their own (:data:`STREAMS`, not the service pool: a
command may stream for an hour without holding a create's thread)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi import Depends, Path, Query, Request

from ..sessions import dataplane
from .context import Context
from .principal import Caller, Ctx, Principal, acting_on

T = TypeVar("T")
STREAMS = anyio.CapacityLimiter(64)
_END: Any = object()

SessionId = Annotated[str, Path(description="The session's id (in the caller's tenant).")]
TenantQuery = Annotated[
    str | None, Query(description="Admin keys only: the tenant (a tenant key acts as its own).")
]
PathQuery = Annotated[
    str,
    Query(
        description="A path under /workspace: relative to it, or absolute under it. Never "
        "through a symlink; '..' is refused.",
        max_length=dataplane.PATH_MAX,
    ),
]


def limits(ctx: Context) -> dataplane.Limits:
    return dataplane.Limits(file_bytes=ctx.limits.upload_bytes)


async def open_workspace(
    request: Request, ctx: Context, caller: Principal, session_id: str, tenant: str | None
) -> dataplane.Workspace:
    """The session's workspace in the caller's tenant (another tenant's: not found, as a
    missing one); the audit line names the session."""
    scope = acting_on(request, caller, session_id, tenant)
    return await ctx.call(ctx.sessions.workspace, session_id, scope, limits(ctx))


@dataclass(frozen=True)
class Target:
    """The session a data-plane route names, for the caller in its tenant; :meth:`open`
    locates its workspace once the route has checked its own input (a bad request is
    refused before the session is looked up, as it always was)."""

    request: Request
    ctx: Context
    caller: Principal
    session_id: str
    tenant: str | None

    async def open(self) -> dataplane.Workspace:
        return await open_workspace(
            self.request, self.ctx, self.caller, self.session_id, self.tenant
        )


async def _target(
    session_id: SessionId, request: Request, caller: Caller, ctx: Ctx, tenant: TenantQuery = None
) -> Target:
    return Target(request, ctx, caller, session_id, tenant)


SessionWorkspace = Annotated[Target, Depends(_target)]
"""The session id (path), the tenant (query, admin keys), the caller and the context: what
every data-plane route takes, declared once."""


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
