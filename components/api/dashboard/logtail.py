"""The detail page's log tail, live: ``GET /sessions/{id}/logs/live`` streams the
container's output to the page as server-sent events.

It reads the data plane's logs with ``follow`` (:meth:`dockyard.sessions.dataplane.Workspace.logs`,
what ``GET /api/sessions/{id}/logs?follow=true`` streams), for the session located in the
cookie's tenant exactly like the page (another tenant's answers 404 like a missing one).
The output is the agent's, so hostile: each frame's ``data`` is one JSON array of lines
(``ensure_ascii``: no byte of the output can end a frame or forge a field), and the
page's script adds them as text (``textContent``, never HTML). Everything is bounded:
a line at :data:`MAX_LINE` characters, a frame at :data:`TAIL_LINES` lines (the page
keeps no more), a key at :data:`STREAMS_PER_KEY` open streams, a stream at
:data:`LIFETIME_S` (the browser then reconnects and gets the tail again). The stream
ends when the page goes (the disconnect closes the engine's log stream), when the login
ends (checked at every keep-alive), when the server closes its streams, and when the
container's output ends (an ``end`` event: the page stops listening)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
from anyio import CancelScope
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...errors import Conflict, DockyardError
from ..events_hub import EventHub, Streams
from ..principal import mark
from ..workspace import iterate
from .login import still_logged_in, viewer_of
from .pages import SECURITY_HEADERS, ctx_of, scope_of

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)

TAIL_LINES = 200
"""Lines the stream starts with (the container's last) and the most one frame carries;
the page keeps no more than these either."""
MAX_LINE = 4096
"""Characters of one line shown; a longer line (or output without a newline) is cut."""
STREAMS_PER_KEY = 4
"""Live log tails one key may hold open at once on this replica (each holds an engine
stream and a waiting worker thread)."""
KEEPALIVE_S = 15.0
"""A quiet stream sends a comment this often (and checks its login is still there)."""
LIFETIME_S = 600.0
"""A stream ends after this; the browser reconnects by itself (``retry``)."""
RETRY_MS = 3000


def shown(raw: bytes) -> str:
    """One line of output as text: at most :data:`MAX_LINE` characters, undecodable bytes
    replaced, its carriage return dropped."""
    text = raw.rstrip(b"\r").decode("utf-8", "replace")
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 1] + "…"


class Lines:
    """Output chunks (as the engine sends them: any size, lines split anywhere) to whole
    lines; a partial line longer than :data:`MAX_LINE` bytes is let out as it is."""

    def __init__(self) -> None:
        self.partial = b""

    def feed(self, chunk: bytes) -> list[str]:
        *whole, self.partial = (self.partial + chunk).split(b"\n")
        if len(self.partial) > 4 * MAX_LINE:  # bytes: up to 4 a character
            whole.append(self.partial)
            self.partial = b""
        return [shown(line) for line in whole]

    def rest(self) -> list[str]:
        rest, self.partial = self.partial, b""
        return [shown(rest)] if rest else []


def frame(lines: list[str]) -> bytes:
    """An SSE message of ``lines`` (the newest :data:`TAIL_LINES`)."""
    return b"data: " + json.dumps(lines[-TAIL_LINES:]).encode() + b"\n\n"


END = b'event: end\ndata: "the container\'s output ended"\n\n'


class LogStream(Response):
    """The SSE answer: the engine's log chunks pulled in a worker thread, cut into lines,
    sent as frames; a disconnect, the lifetime, the login's end or the output's end stop
    it, and ``done`` runs however it ends."""

    media_type = "text/event-stream"

    def __init__(
        self,
        chunks: Iterator[bytes],
        stop: Callable[[], None],
        done: Callable[[], None],
        still_in: Callable[[], Awaitable[bool]],
        hub: EventHub,
    ) -> None:
        super().__init__(
            headers={**SECURITY_HEADERS, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        # A stream: no Content-Length (the empty body's "0" would end it at once).
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.chunks, self.stop, self.done, self.still_in = chunks, stop, done, still_in
        self.hub = hub

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await self._body(send, f": dockyard log tail\nretry: {RETRY_MS}\n\n".encode())
            writer, reader = anyio.create_memory_object_stream[list[str]](16)
            async with anyio.create_task_group() as group:
                group.start_soon(self._pump, writer)
                group.start_soon(_watch, receive, group.cancel_scope)
                group.start_soon(_closing, self.hub, group.cancel_scope)
                await self._forward(reader, send)
                group.cancel_scope.cancel()
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.stop()
            self.done()

    @staticmethod
    async def _body(send: Any, data: bytes) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})

    async def _pump(self, writer: MemoryObjectSendStream[list[str]]) -> None:
        """The engine's chunks as lines into ``writer`` (backpressure: a slow page slows
        the read; the engine keeps the output)."""
        lines = Lines()
        async with writer:
            try:
                async for chunk in iterate(self.chunks, self.stop):
                    batch = lines.feed(chunk)
                    if batch:
                        await writer.send(batch)
            except Exception as exc:  # the engine's stream broke: one line, not a traceback
                log.warning(
                    "dashboard log tail: the engine's stream broke (%s)", type(exc).__name__
                )
            if rest := lines.rest():
                await writer.send(rest)

    async def _forward(self, reader: MemoryObjectReceiveStream[list[str]], send: Any) -> None:
        deadline = anyio.current_time() + LIFETIME_S
        while (left := deadline - anyio.current_time()) > 0:
            batch: list[str] | None = None
            with anyio.move_on_after(min(KEEPALIVE_S, left)):
                try:
                    batch = await reader.receive()
                except anyio.EndOfStream:
                    await self._body(send, END)
                    return
            if batch is None:
                if not await self.still_in():
                    return
                await self._body(send, b": keep-alive\n\n")
                continue
            # Whatever else is waiting goes in the same frame (a flood: one frame of the
            # newest lines, not thousands of frames the page would throw away).
            while len(batch) < 4 * TAIL_LINES:
                try:
                    batch += reader.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            await self._body(send, frame(batch))


async def _watch(receive: Any, scope: CancelScope) -> None:
    """Ends the stream when the page goes (the client disconnects)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _closing(hub: EventHub, scope: CancelScope) -> None:
    """Ends the stream when the server closes its streams (as the event streams end)."""
    while not hub.closing:
        await hub.bell.wait(1.0)
    scope.cancel()


def _streams(request: Request) -> Streams:
    state = request.app.state
    if getattr(state, "dashboard_log_streams", None) is None:
        state.dashboard_log_streams = Streams()
    return state.dashboard_log_streams  # type: ignore[no-any-return]


def _open(ctx: Any, session: str, scope: str | None) -> tuple[Any, Iterator[bytes], Any]:
    """The session's workspace (in ``scope``: another tenant's is not found) and its
    container's output: the last :data:`TAIL_LINES` lines, then what comes."""
    workspace = ctx.sessions.workspace(session, scope)
    try:
        chunks, stop = workspace.logs(TAIL_LINES, True)
    except DockyardError:
        _close(workspace)
        raise
    except Exception as exc:  # the engine's own error (its container gone, the engine down)
        _close(workspace)
        raise Conflict(
            f"session {session!r}: its container's output cannot be read ({type(exc).__name__})"
        ) from None
    return workspace, chunks, stop


def _close(workspace: Any) -> None:
    with contextlib.suppress(Exception):
        workspace.client.close()


@router.get("/sessions/{session_id}/logs/live")
async def live_logs(session_id: str, request: Request) -> Response:
    """The container's output as SSE: its last lines, then each new one (see the module)."""
    viewer = await viewer_of(request)
    if viewer is None:
        return Response(status_code=401, headers=SECURITY_HEADERS)
    scope = scope_of(request, viewer)
    mark(request, session_id, scope)
    ctx = ctx_of(request)
    release = _streams(request).reserve(viewer.principal.key_id, STREAMS_PER_KEY)
    try:
        workspace, chunks, stop = await ctx.call(_open, ctx, session_id, scope)
    except BaseException as error:
        release()
        if not isinstance(error, DockyardError):
            raise
        return Response(
            "\n".join(error.problems), status_code=error.http_status, headers=SECURITY_HEADERS
        )

    def done() -> None:
        release()
        _close(workspace)

    async def still_in() -> bool:
        return await still_logged_in(request, viewer.token)

    return LogStream(chunks, stop, done, still_in, request.app.state.events)
