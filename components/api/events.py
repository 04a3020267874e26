"""Lifecycle and health events: one source, the audit trail, turned into stored events and
served as server-sent events (``GET /api/events``).

Every lifecycle verb of the service layer (:mod:`dockyard.sessions`) writes an audit line,
and so do the host scripts on their own (health refresh and restart, idle stop, workspace
backups; :mod:`dockyard.host.audit_trail`). The server tails those trails
(:class:`Tail`: byte offsets kept in the store, rotation followed by inode), maps each line
to zero or more events (:func:`events_of`) and stores them with an id that only grows
(:class:`EventStore`); ``session.ready`` is the one event the server observes itself, on
the engine, after a create, refresh or restart (:class:`Readiness`). A line is one event however often it is read (its SHA-256 is a
unique key), so restarts and several replicas on one host never duplicate it; on
PostgreSQL one lock orders the inserts, so ids become visible in id order and a stream
resuming after id N never misses a later-committed smaller id.

One module per job: :mod:`.events_lines` (what a line means, how an event is shown),
:mod:`.events_tail` (reading a trail), :mod:`.events_store` (the stored events),
:mod:`.events_hub` (the background reader, readiness, the bell, streams per key); this one
is the route.

The trails are files the environments cannot write (the state directory and
``/var/log/dockyard`` are the host's, 0700/0600, and mounted into no container); their
values are still treated as data: coerced to short strings, and an SSE frame is one JSON
line (``ensure_ascii``), so no value can break the framing or forge an event.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from ..errors import InvalidInput
from .events_hub import READY_AFTER, Bell, EventHub, Probe, Readiness, Streams
from .events_lines import EVENT_TYPES, QUOTA_PREFIX, Line, as_dict, events_of, frame, rows_of
from .events_store import EventStore
from .events_tail import Tail
from .principal import Caller

__all__ = [
    "EVENT_TYPES",
    "QUOTA_PREFIX",
    "READY_AFTER",
    "Bell",
    "EventHub",
    "EventStore",
    "Line",
    "Probe",
    "Readiness",
    "Streams",
    "Tail",
    "as_dict",
    "events_of",
    "frame",
    "router",
    "rows_of",
    "stream_events",
]

router = APIRouter(tags=["events"])


EVENT_ID_MAX = 2**31 - 1
"""The largest event id (the store's INTEGER column): a larger one to resume after is
refused 422, never sent to the store (where it would fail mid-stream)."""


def _start(last_event_id: str | None, after: int | None, hub: EventHub) -> int:
    if last_event_id is not None:
        if not (last_event_id.strip().isascii() and last_event_id.strip().isdigit()):
            raise InvalidInput(
                "request",
                [
                    "header.Last-Event-ID: not an event id "
                    "(allowed: the id of the last event received, a whole number)"
                ],
            )
        where, position = "header.Last-Event-ID", int(last_event_id.strip())
    elif after is not None:
        where, position = "query.after", after
    else:
        return hub.store.newest()
    if position > EVENT_ID_MAX:
        raise InvalidInput(
            "request", [f"{where}: {position} is not an event id (allowed: 0 to {EVENT_ID_MAX})"]
        )
    return position


@router.get(
    "/api/events",
    summary="Lifecycle and health events as server-sent events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "An event stream."}},
)
async def stream_events(
    request: Request,
    caller: Caller,
    session: Annotated[
        str | None, Query(max_length=200, description="Only this session's.")
    ] = None,
    tenant: Annotated[
        str | None, Query(max_length=64, description="Admin keys: only this tenant's.")
    ] = None,
    types: Annotated[
        str | None, Query(max_length=1000, description="Comma-separated event types.")
    ] = None,
    after: Annotated[
        int | None,
        Query(ge=0, le=EVENT_ID_MAX, description="Start after this event id (0: from the first)."),
    ] = None,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> StreamingResponse:
    """Each event once, in id order: ``id`` (resume with ``Last-Event-ID`` or ``after``),
    ``event`` (its type) and one ``data`` line of JSON. Without either, the stream starts
    with the next new event. A tenant's key sees only its tenant's events."""
    hub: EventHub = request.app.state.events
    wanted = [t.strip() for t in (types or "").split(",") if t.strip()]
    unknown = [t for t in wanted if t not in EVENT_TYPES]
    if unknown:
        raise InvalidInput(
            "request",
            [
                f"query.types: {unknown[0]!r} is not an event type (allowed: {', '.join(EVENT_TYPES)})"
            ],
        )
    scope = caller.scope(tenant)
    position = await to_thread.run_sync(_start, last_event_id, after, hub)
    settings = hub.settings

    async def frames() -> AsyncIterator[str]:
        nonlocal position
        yield ": dockyard events\nretry: 3000\n\n"
        quiet = 0.0
        while not hub.closing:
            read = functools.partial(
                hub.store.after,
                position,
                tenant=scope,
                every_tenant=caller.admin,
                session_id=session,
                types=wanted,
            )
            rows = await to_thread.run_sync(read)
            for row in rows:
                position = row.id
                yield frame(row)
            if rows:
                quiet = 0.0
                continue
            if await request.is_disconnected():
                return
            if quiet >= settings.keepalive_s:
                quiet = 0.0
                yield ": keep-alive\n\n"
            started = asyncio.get_running_loop().time()
            await hub.bell.wait(settings.store_poll_s)
            quiet += asyncio.get_running_loop().time() - started

    return _Stream(frames(), hub.streams.reserve(caller.key_id, settings.streams_per_key))


class _Stream(StreamingResponse):
    """An SSE response that gives its stream's place back however it ends."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
