"""Live pages: the dashboard's own event stream (``GET /events``), the API's server-sent
events (:func:`dockyard.api.events.stream_events`) for the logged-in viewer's cookie.

It is scoped exactly like the table: a tenant's login reads only its tenant's events
(whatever ``tenant`` it asks for); an admin's, every tenant's or the one of its
``tenant`` filter. The pages' script re-reads the table's rows (or the detail page's
state) when an event arrives, and polls slowly only while the stream is down."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..events import EVENT_TYPES, EventHub, stream_events
from .login import viewer_of
from .pages import SECURITY_HEADERS

router = APIRouter(include_in_schema=False)


async def stream_of(request: Request, query: dict[str, Any]) -> dict[str, Any]:
    """The page's stream: its URL (starting after the newest event stored now, so nothing
    between the page's rendering and the stream's opening is missed) and the event types
    its script listens for."""
    hub: EventHub = request.app.state.events
    newest = await to_thread.run_sync(hub.store.newest)
    wanted = {k: v for k, v in query.items() if v}
    return {
        "events_url": "/events?" + urlencode({**wanted, "after": newest}),
        "event_types": ",".join(EVENT_TYPES),
    }


@router.get("/events")
async def events(request: Request) -> Response:
    """The viewer's events as SSE (``session``: one session's; ``tenant``: admin logins
    only; ``after`` or ``Last-Event-ID``: where to resume)."""
    viewer = await viewer_of(request)
    if viewer is None:
        return Response(status_code=401, headers=SECURITY_HEADERS)
    q = request.query_params
    after = q.get("after", "")
    tenant = q.get("tenant", "").strip()[:64] or None
    session = q.get("session", "").strip()[:200] or None
    return await stream_events(
        request,
        viewer.principal,
        session=session,
        tenant=tenant if viewer.principal.admin else None,
        after=int(after) if after.isdigit() and len(after) <= 18 else None,
        last_event_id=(request.headers.get("last-event-id") or "")[:20] or None,
    )
