"""Who is calling: a :class:`Principal` resolved once per request from the API key
(``Authorization: Bearer dk_…``), then charged against the key's rate.

A tenant's key acts only as its tenant: handlers pass :meth:`Principal.scope` to the
service layer, so another tenant's session is looked up in the caller's tenant and is
"not found" exactly like a missing one. An admin key may name any tenant, or none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Query, Request

from ..errors import NotFound
from .context import Context
from .errors import RateLimited, Unauthorized


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant: str | None
    admin: bool

    def scope(self, tenant: str | None = None) -> str | None:
        """The tenant a call acts in: a tenant key's own, whatever was asked; an admin's
        choice (None: every tenant)."""
        return tenant if self.admin else self.tenant

    def require_admin(self, what: str) -> None:
        if not self.admin:
            # A tenant's key does not learn that admin endpoints exist.
            raise NotFound(f"no such endpoint: {what}")


def acting_on(
    request: Request, caller: Principal, session: str | None, tenant: str | None
) -> str | None:
    """The tenant the caller acts in (:meth:`Principal.scope`), named with ``session`` on
    this request's audit line."""
    scope = caller.scope(tenant)
    mark(request, session, scope)
    return scope


def mark(request: Request, session: str | None, tenant: str | None) -> None:
    """What the audit line of this request names."""
    request.scope.setdefault("dockyard", {}).update(session=session, tenant=tenant)


class TokenBuckets:
    """Per-key token buckets in this process's memory: right for ONE server replica
    (several replicas would each allow the rate; share a limiter then)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str) -> float:
        """0 if the request may go, else the seconds until it could."""
        with self._lock:
            now = time.monotonic()
            tokens, then = self._buckets.get(key_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            if tokens >= 1:
                self._buckets[key_id] = (tokens - 1, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1 - tokens) / self.rate


def context(request: Request) -> Context:
    return request.app.state.context  # type: ignore[no-any-return]


async def principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized("no API key: send Authorization: Bearer <key>")
    return await authenticated(request, presented.strip())


async def authenticated(request: Request, presented: str) -> Principal:
    """The principal of the API key ``presented`` (however the face received it: the
    E2B-compatible face reads X-API-Key), charged against the key's rate; its key id is
    this request's audit actor."""
    ctx = context(request)
    info = await ctx.call(ctx.store.authenticate, presented)
    if info is None:
        raise Unauthorized("the API key is unknown or revoked")
    request.scope.setdefault("dockyard", {})["actor"] = f"key:{info.id}"
    wait = request.app.state.buckets.take(info.id)
    if wait:
        raise RateLimited(
            f"key {info.id} passed its rate ({ctx.limits.rate:g} requests/s, "
            f"burst {ctx.limits.burst}): retry in {wait:.1f} s",
            wait,
        )
    return Principal(info.id, info.tenant, info.admin)


Caller = Annotated[Principal, Depends(principal)]
Ctx = Annotated[Context, Depends(context)]

T = TypeVar("T")
SessionId = Annotated[str, Path(description="The session's id (in the caller's tenant).")]
TenantQuery = Annotated[
    str | None, Query(description="Admin keys only: the tenant (a tenant key acts as its own).")
]


@dataclass(frozen=True)
class Acting:
    """The session a route names (path ``session_id``, query ``tenant``), with the caller
    and the context: what every route on one session takes, declared once
    (:data:`OnSession`). :meth:`scope` is asked once the route has checked its own input,
    so a refused request's audit line names no session, as before."""

    request: Request
    caller: Principal
    ctx: Context
    session_id: str
    tenant: str | None

    def scope(self) -> str | None:
        """The tenant the caller acts in, with the session named on the audit line."""
        return acting_on(self.request, self.caller, self.session_id, self.tenant)

    async def call(self, verb: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``verb(session_id, *args, scope, **kwargs)`` in the service pool."""
        scope = self.scope()
        return await self.ctx.call(verb, self.session_id, *args, scope, **kwargs)


async def _acting(
    session_id: SessionId, request: Request, caller: Caller, ctx: Ctx, tenant: TenantQuery = None
) -> Acting:
    return Acting(request, caller, ctx, session_id, tenant)


OnSession = Annotated[Acting, Depends(_acting)]
