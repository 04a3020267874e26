"""Who may reach a sandbox through the routing, and how many calls at once (issue 30; the
routing itself is :mod:`dockyard.api.e2b_routing`).

:func:`who`: a dockyard key of the sandbox's tenant (``X-API-Key``), or the sandbox's own
access token (``X-Access-Token`` / ``e2b-traffic-access-token``) charged to the API's rate
buckets; nothing else passes. :class:`Caps`: the routed requests and WebSockets in flight
per sandbox and per tenant, refused 429 over their caps before any upstream connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from fastapi import Request
from starlette.types import Scope

from ..errors import NotFound
from ..sessions import e2b as sandboxes
from .context import Context
from .e2b_upstream import ACCESS_TOKEN, TRAFFIC_TOKEN
from .errors import RateLimited, Unauthorized
from .principal import authenticated

PER_SANDBOX = 64
"""Routed requests one sandbox may have in flight (long command streams included)."""
PER_TENANT = 256
"""Routed requests one tenant's sandboxes may have in flight together. With
:data:`PER_SANDBOX` these are the bound on upstream connections: one caller (or one
agent with its own token) never holds what other tenants' calls need."""
WEBSOCKETS_PER_SANDBOX = 8
"""Routed WebSockets one sandbox may have open (each may hold buffered messages in the
server's memory), within :data:`PER_SANDBOX`."""
WEBSOCKETS_PER_TENANT = 16
"""Routed WebSockets one tenant's sandboxes may have open together, within
:data:`PER_TENANT`."""


async def who(context: Context, scope: Scope, headers: dict[str, str], sandbox_id: str) -> Any:
    """The sandbox's record once the caller proved it may reach it (else an error)."""
    if not sandboxes.SANDBOX_ID.fullmatch(sandbox_id):
        # Never an id this face made: answered like a missing sandbox, before any rate
        # bucket or lookup is keyed by what an unauthenticated caller sent.
        raise NotFound("no such sandbox on this host")
    sessions = context.sessions
    # A WebSocket's scope read as a request (the same dict of dockyard's state).
    scope_as_http = scope if scope["type"] == "http" else {**scope, "type": "http"}
    key = headers.get("x-api-key", "").strip()
    if key:
        request = Request(scope_as_http)
        caller = await authenticated(request, key)
        tenant = caller.scope(None)
        scope["dockyard"].update(session=sandbox_id, tenant=tenant)
        return await context.call(sandboxes.record_of, sessions, sandbox_id, tenant)
    token = headers.get(ACCESS_TOKEN) or headers.get(TRAFFIC_TOKEN)
    if token:
        # Charged like a key: each attempt to the bucket of (sandbox, client address)
        # before the compare, so guesses from one address never empty the bucket of
        # the sandbox's token; that one only once the token matched.
        limits = context.limits
        buckets = Request(scope_as_http).app.state.buckets

        def charge(bucket: str, whose: str) -> None:
            wait = buckets.take(bucket)
            if wait:
                raise RateLimited(
                    f"sandbox {sandbox_id!r}: {whose} passed the rate ({limits.rate:g} "
                    f"requests/s, burst {limits.burst}): retry in {wait:.1f} s",
                    wait,
                )

        client = str((scope.get("client") or ("-",))[0])
        charge(f"sandbox-token-try:{sandbox_id}:{client}", f"token tries from {client}")
        record = await context.call(sandboxes.by_token, sessions, sandbox_id, token)
        if record is None:
            raise NotFound(f"no sandbox {sandbox_id!r} on this host")
        charge(f"sandbox-token:{sandbox_id}", "its access token")
        scope["dockyard"].update(
            actor=f"sandbox-token:{sandbox_id}", session=sandbox_id, tenant=record.tenant
        )
        return record
    raise Unauthorized(
        "no credentials for the sandbox: send X-API-Key (a dockyard key of its tenant) "
        "or X-Access-Token (the sandbox's envdAccessToken)"
    )


class Caps:
    """The routed calls in flight, per sandbox and per tenant (one per server)."""

    def __init__(self) -> None:
        self.held: dict[tuple[str, str], int] = {}

    @contextlib.contextmanager
    def slot(
        self, sandbox_id: str, tenant: str | None, *, websocket: bool = False
    ) -> Iterator[None]:
        """One routed request in flight for the sandbox and its tenant, refused 429 over
        :data:`PER_SANDBOX` / :data:`PER_TENANT` (before any upstream connection); a
        WebSocket also counts against :data:`WEBSOCKETS_PER_SANDBOX` /
        :data:`WEBSOCKETS_PER_TENANT`."""
        keys = [("sandbox", sandbox_id, PER_SANDBOX), ("tenant", tenant or "-", PER_TENANT)]
        if websocket:
            keys += [
                ("sandbox-ws", sandbox_id, WEBSOCKETS_PER_SANDBOX),
                ("tenant-ws", tenant or "-", WEBSOCKETS_PER_TENANT),
            ]
        for what, name, cap in keys:
            held = self.held.get((what, name), 0)
            if held >= cap:
                kind, things = (
                    (what[:-3], "WebSockets open")
                    if what.endswith("-ws")
                    else (what, "requests in flight")
                )
                raise RateLimited(
                    f"{kind} {name!r} has {held} {things} (allowed: at most {cap} "
                    f"per {kind}; end a stream or retry when one ends)",
                    1.0,
                )
        for what, name, _ in keys:
            self.held[(what, name)] = self.held.get((what, name), 0) + 1
        try:
            yield
        finally:
            for what, name, _ in keys:
                left = self.held[(what, name)] - 1
                if left:
                    self.held[(what, name)] = left
                else:
                    del self.held[(what, name)]
