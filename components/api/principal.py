"""Who is calling: a :class:`Principal` resolved once per request from the API key
(``Authorization: Bearer dk_…``), then charged against the key's rate.

A tenant's key acts only as its tenant: handlers pass :meth:`Principal.scope` to the
service layer, so another tenant's session is looked up in the caller's tenant and is
"not found" exactly like a missing one. An admin key may name any tenant, or none.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Query, Request
from sqlalchemy import event
from sqlalchemy.orm import Session, object_session

from ..errors import NotFound
from ..sessions.listing import Coalesced
from .context import Context
from .errors import RateLimited, Unauthorized
from .store import KeyInfo
from .store.models import ApiKey

log = logging.getLogger(__name__)


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

    PRUNE_AT = 10_000
    """Past this many buckets the full ones are dropped (a full bucket is the same as none):
    callers can name buckets (a sandbox id and address per token try), so what they send
    must not grow this process's memory for good."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key_id: str) -> float:
        """0 if the request may go, else the seconds until it could."""
        with self._lock:
            now = time.monotonic()
            if len(self._buckets) >= self.PRUNE_AT:
                self._prune(now)
            tokens, then = self._buckets.get(key_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            if tokens >= 1:
                self._buckets[key_id] = (tokens - 1, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        self._buckets = {
            key: (tokens, then)
            for key, (tokens, then) in self._buckets.items()
            if tokens + (now - then) * self.rate < self.burst
        }


KEY_CACHE_S = 2.0
"""The bound within which a key revoked by another process or replica (``dockyard keys
revoke``, a second server on the same PostgreSQL) — or deleted from the store by hand — is
refused here. A revocation through this process's store (the API, any KeyStore object in
it) is refused at once (:class:`KeyCache`)."""
KEY_CACHE_MAX_AGE_S = 60.0
"""However often the store confirms it, a key is read again after this long (its last use
is then written: :data:`dockyard.api.store.LAST_USED_STEP`)."""


@dataclass
class _Trusted:
    info: KeyInfo
    started: float
    """When the store read that found it live began (monotonic)."""
    generation: int
    confirmed: float = float("-inf")
    """When the latest :meth:`KeyCache.confirm` that found it live began (monotonic)."""


class KeyCache:
    """Keys found live, trusted in this process, so a request does not take a thread and a
    store read to learn what the previous one learnt (the key check was a third of a list
    request's cost). Only live keys are kept (an unknown key is asked every time: nobody
    fills this with guesses), by the SHA-256 of what was presented.

    Revocation here: any ``ApiKey.revoked_at`` set in this process (:meth:`KeyStore.
    revoke`) moves the *generation*, once when set and once when its transaction commits;
    an entry holds the generation seen before its store read began and is used only while
    it is still the current one. So after a revocation here commits, no entry from before
    it answers, even one whose read raced the commit.

    Elsewhere (another process or replica; a row deleted by hand): an entry is trusted for
    :data:`KEY_CACHE_S` from its own read, or from the start of the latest :meth:`confirm`
    that found its key live — the server asks the store which of the trusted keys are still
    live every half of that (:func:`watch_revocations`: one read for all of them, where each
    key's expiry cost a read of its own, 200 at once under a burst of 200 clients). A key
    found gone is dropped; an entry put after a confirmation began is not confirmed by it.
    So a key revoked or deleted elsewhere is refused within :data:`KEY_CACHE_S`, and a store
    that cannot be read confirms nothing (entries run out as they did without it)."""

    MAX = 4096
    generation = 0
    """Moves with every revocation in this process (every store, every cache)."""

    def __init__(self, ttl_s: float = KEY_CACHE_S) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[bytes, _Trusted] = {}
        self.checks: Coalesced[KeyInfo | None] = Coalesced()
        """Concurrent checks of one key share a store read started after they arrived."""

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def slot(presented: str) -> bytes:
        return hashlib.sha256(presented.encode()).digest()

    def get(self, slot: bytes) -> KeyInfo | None:
        entry = self._entries.get(slot)
        if entry is None:
            return None
        now = time.monotonic()
        if (
            entry.generation != KeyCache.generation
            or now >= max(entry.started, entry.confirmed) + self.ttl_s
            or now >= entry.started + KEY_CACHE_MAX_AGE_S
        ):
            self._entries.pop(slot, None)
            return None
        return entry.info

    def put(self, slot: bytes, info: KeyInfo, generation: int, started: float) -> None:
        """``info`` as read by a store read begun at ``started`` (monotonic) in
        ``generation``: kept only if no revocation came since."""
        if generation != KeyCache.generation:
            return
        if len(self._entries) >= self.MAX:
            self._entries.clear()
        self._entries[slot] = _Trusted(info, started, generation)

    def trusted(self) -> dict[bytes, str]:
        """The key id of each entry (what :meth:`confirm` asks the store about)."""
        return {slot: entry.info.id for slot, entry in self._entries.items()}

    def confirm(self, asked: dict[bytes, str], live: set[str], began: float) -> None:
        """The store said, in a read begun at ``began`` (monotonic), that of the keys
        ``asked`` (:meth:`trusted`) those in ``live`` are live: they are trusted from
        ``began``, the others are dropped. An entry put since (another read of that key)
        is left as it is, unless its key is gone."""
        for slot, key_id in asked.items():
            entry = self._entries.get(slot)
            if entry is None or entry.info.id != key_id:
                continue
            if key_id not in live:
                self._entries.pop(slot, None)
            elif entry.started <= began:
                entry.confirmed = max(entry.confirmed, began)

    @classmethod
    def revoked(cls) -> None:
        cls.generation += 1


async def watch_revocations(app: Any, context: Context) -> None:
    """Every half of ``app.state.keys``' bound, while it trusts keys, ask the store which of
    them are still live (:meth:`KeyCache.confirm`); runs until cancelled. A failed read is
    logged and confirms nothing."""
    while True:
        cache: KeyCache = app.state.keys
        await asyncio.sleep(cache.ttl_s / 2)
        asked = cache.trusted()
        if not asked:
            continue
        began = time.monotonic()
        try:
            live = await context.call(context.store.live_among, asked.values())
        except Exception as exc:  # the store away: entries run out on their own
            log.warning("trusted keys not confirmed: %s", type(exc).__name__)
            continue
        cache.confirm(asked, live, began)


@event.listens_for(ApiKey.revoked_at, "set")
def _revoking(target: ApiKey, value: object, _old: object, _initiator: object) -> None:
    if value is None:
        return
    KeyCache.revoked()
    session = object_session(target)
    if session is not None:
        session.info["dockyard_key_revoked"] = True


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    if session.info.pop("dockyard_key_revoked", False):
        KeyCache.revoked()


async def context(request: Request) -> Context:
    # async: FastAPI runs a plain function dependency in a thread (a hop per request).
    return request.app.state.context  # type: ignore[no-any-return]


async def principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized("no API key: send Authorization: Bearer <key>")
    return await authenticated(request, presented.strip())


async def live_key(request: Request, presented: str) -> KeyInfo | None:
    """The key's info if ``presented`` is live: from this process's :class:`KeyCache`, or
    from the store (in the service pool, one read for concurrent checks of one key)."""
    ctx = context_of(request)
    cache: KeyCache = request.app.state.keys
    slot = cache.slot(presented)
    found = cache.get(slot)
    if found is not None:
        return found

    async def check() -> KeyInfo | None:
        generation, started = KeyCache.generation, time.monotonic()
        info = await ctx.call(ctx.store.authenticate, presented)
        if info is not None:
            cache.put(slot, info, generation, started)
        return info

    return await cache.checks((id(ctx), slot), check)


async def authenticated(request: Request, presented: str) -> Principal:
    """The principal of the API key ``presented`` (however the face received it: the
    E2B-compatible face reads X-API-Key), charged against the key's rate; its key id is
    this request's audit actor."""
    info = await live_key(request, presented)
    if info is None:
        raise Unauthorized("the API key is unknown or revoked")
    charge(request, info.id)
    return Principal(info.id, info.tenant, info.admin)


def charge(request: Request, key_id: str) -> None:
    """``key_id`` is this request's audit actor and is charged one request against its
    rate (:class:`RateLimited` past it): whichever way the key came in (a header, the
    dashboard's login cookie)."""
    request.scope.setdefault("dockyard", {})["actor"] = f"key:{key_id}"
    wait = request.app.state.buckets.take(key_id)
    if wait:
        limits = context_of(request).limits
        raise RateLimited(
            f"key {key_id} passed its rate ({limits.rate:g} requests/s, "
            f"burst {limits.burst}): retry in {wait:.1f} s",
            wait,
        )


def context_of(request: Request) -> Context:
    return request.app.state.context  # type: ignore[no-any-return]


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
