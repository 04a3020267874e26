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
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Query, Request
from sqlalchemy import event
from sqlalchemy.orm import Session, object_session

from ..errors import NotFound
from .context import Context
from .errors import RateLimited, Unauthorized
from .store import KeyInfo
from .store.models import ApiKey

log = logging.getLogger(__package__)


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
"""How long a key found live is trusted without asking the store again: the bound within
which a key revoked by another process or replica (``dockyard keys revoke``, a second
server on the same PostgreSQL) is refused here. A revocation through this process's store
(the API, any KeyStore object in it) is refused at once (:class:`KeyCache`)."""


KEY_IN_USE_S = 30.0
"""A key checked in this long is read again in the background before its entry runs out
(:meth:`KeyCache.refresh`); one not checked for longer runs out and is read on its next use."""


class KeyCache:
    """Keys found live, trusted for :data:`KEY_CACHE_S` in this process, so a request does
    not take a thread and a store read to learn what the previous one learnt (the key check
    was a third of a list request's cost). Only live keys are kept (an unknown key is asked
    every time: nobody fills this with guesses), by the SHA-256 of what was presented.

    Store reads are grouped: the keys that miss are read by one query (:meth:`check`), and
    while keys are in use, every quarter of :data:`KEY_CACHE_S` one query in the background
    reads again every key used in the last :data:`KEY_IN_USE_S` (:meth:`refresh`), so a key
    in use is not read on a request's path (before, 200 keys expired together every 2 s and
    were read one by one on 200 requests' paths).

    Revocation: any ``ApiKey.revoked_at`` set in this process (:meth:`KeyStore.revoke`)
    moves the *generation*, once when set and once when its transaction commits; an entry
    holds the generation seen before its store read began and is used only while it is
    still the current one. So after a revocation here commits, no entry from before it
    answers, even one whose read raced the commit. Another process's revocation is seen
    within :data:`KEY_CACHE_S`: an entry lives that long from the start of the read that
    last found the key live, and a refresh that finds it revoked drops it at once."""

    MAX = 4096
    generation = 0
    """Moves with every revocation in this process (every store, every cache)."""

    def __init__(
        self,
        ttl_s: float = KEY_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
        in_use_s: float = KEY_IN_USE_S,
    ) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.in_use_s = in_use_s
        self._entries: dict[bytes, _Entry] = {}
        self._groups: dict[int, _Checks] = {}
        self.reads = 0
        """Store reads made by :meth:`check` (for tests and figures)."""

    @staticmethod
    def slot(presented: str) -> bytes:
        return hashlib.sha256(presented.encode()).digest()

    def get(self, slot: bytes) -> KeyInfo | None:
        entry = self._live(slot)
        return entry.info if entry is not None else None

    def _live(self, slot: bytes) -> _Entry | None:
        entry = self._entries.get(slot)
        if entry is None:
            return None
        if entry.generation != KeyCache.generation or self.clock() >= entry.until:
            self._entries.pop(slot, None)
            return None
        return entry

    def put(self, slot: bytes, info: KeyInfo, generation: int, started: float) -> None:
        """``info`` as read by a store read begun at ``started`` (:attr:`clock`) in
        ``generation``: kept only if no revocation came since."""
        if generation != KeyCache.generation:
            return
        if len(self._entries) >= self.MAX:
            self._entries.clear()
        self._entries[slot] = _Entry(info, started + self.ttl_s, generation, self.clock())

    @classmethod
    def revoked(cls) -> None:
        cls.generation += 1

    async def check(self, ctx: Context, presented: str) -> KeyInfo | None:
        """The key's info if ``presented`` is live: from this cache, or from the store.

        Checks that miss the cache are gathered: one store read (:meth:`KeyStore.checked`,
        in the service pool) answers every key waiting when it starts, with at most
        :attr:`_Checks.READS` reads at once (more wait for the first to end). A check is
        answered only by a read begun after it arrived, so a key revoked before a request
        came is never let in by an older read. A key found here is marked used, for
        :meth:`refresh`."""
        slot = self.slot(presented)
        entry = self._live(slot)
        if entry is not None:
            entry.used_at = self.clock()
            self._refreshing(ctx)
            return entry.info
        # A caller that goes away (a client disconnects) does not cancel the others' read.
        info = await asyncio.shield(self._queue(ctx, presented))
        if info is not None:
            self._refreshing(ctx)
        return info

    async def refresh(self, ctx: Context) -> bool:
        """Read again, by one query (:meth:`KeyStore.refreshed`), every key held and used in
        the last :attr:`in_use_s`: renew the entries of those still live (from this read's
        start), drop the others. False when none is in use (nothing read)."""
        since = self.clock() - self.in_use_s
        used = {
            slot: entry
            for slot in list(self._entries)
            if (entry := self._live(slot)) is not None and entry.used_at >= since
        }
        if not used:
            return False
        generation, started = KeyCache.generation, self.clock()
        self.reads += 1
        found = await ctx.call(ctx.store.refreshed, sorted({e.info.id for e in used.values()}))
        for slot, entry in used.items():
            if self._entries.get(slot) is not entry:
                continue  # replaced meanwhile by a newer read's, or dropped
            info = found.get(entry.info.id)
            if info is None:
                del self._entries[slot]
                continue
            self.put(slot, info, generation, started)
            if slot in self._entries:
                self._entries[slot].used_at = entry.used_at
        return True

    def _refreshing(self, ctx: Context) -> None:
        """Refresh every quarter of the cache's time while keys are used (started once)."""
        group = self._group(ctx)
        if group.refresher is not None:
            return

        async def refreshing() -> None:
            try:
                while True:
                    # A quarter: an entry runs out only if two refreshes in a row take
                    # more than 3/4 of its time (a busy machine: 1.5 s).
                    await asyncio.sleep(self.ttl_s / 4)
                    if not await self.refresh(ctx):
                        break
            except Exception:  # the entries then run out their time: checks read the store
                log.exception("the API keys in use could not be read again")
            finally:
                group.refresher = None
                self._start(group)

        group.refresher = asyncio.ensure_future(refreshing())

    def _group(self, ctx: Context) -> _Checks:
        group = self._groups.get(id(ctx))
        if group is None:
            group = self._groups[id(ctx)] = _Checks(ctx)
        return group

    def _queue(self, ctx: Context, presented: str) -> asyncio.Future[KeyInfo | None]:
        group = self._group(ctx)
        answer = group.waiting.get(presented)
        if answer is None:
            answer = group.waiting[presented] = asyncio.get_running_loop().create_future()
            answer.add_done_callback(_seen)
        self._start(group)
        return answer

    def _start(self, group: _Checks) -> None:
        """A read of the waiting keys, unless one is about to start or READS run."""
        if not group.waiting or group.gathering or len(group.reads) >= group.READS:
            idle = not (group.waiting or group.reads or group.writing or group.refresher)
            if idle and self._groups.get(id(group.ctx)) is group:
                del self._groups[id(group.ctx)]
            return
        group.gathering = True
        read = asyncio.ensure_future(self._read(group))
        group.reads.add(read)
        read.add_done_callback(lambda done: self._ended(group, done))

    def _ended(self, group: _Checks, read: asyncio.Future[None]) -> None:
        group.reads.discard(read)
        _seen(read)
        self._start(group)

    async def _read(self, group: _Checks) -> None:
        # Started on the loop's next turn: every check that arrived in this one is taken.
        group.gathering = False
        taken = list(group.waiting.items())[: group.MAX]
        for presented, _ in taken:
            del group.waiting[presented]
        if not taken:
            return
        ctx = group.ctx
        generation, started = KeyCache.generation, self.clock()
        self.reads += 1
        try:
            checked = await ctx.call(ctx.store.checked, [p for p, _ in taken])
        except BaseException as exc:  # every waiting caller gets the read's error
            for _, answer in taken:
                if not answer.done():
                    answer.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (presented, answer), info in zip(taken, checked.infos, strict=True):
            if info is not None:
                self.put(self.slot(presented), info, generation, started)
            else:
                self._entries.pop(self.slot(presented), None)
            if not answer.done():
                answer.set_result(info)
        if checked.due:
            self._record_use(group, checked.due, checked.at)

    def _record_use(self, group: _Checks, key_ids: list[str], at: datetime) -> None:
        """The last uses written after the answers, one write at a time (the keys due while
        one is written go with the next)."""
        group.due.update(dict.fromkeys(key_ids, at))
        if group.writing is not None:
            return

        async def write() -> None:
            try:
                while group.due:
                    due, group.due = group.due, {}
                    await group.ctx.call(group.ctx.store.record_use, list(due), max(due.values()))
            except Exception:
                log.exception("the last use of API keys could not be written")
            finally:
                group.writing = None
                self._start(group)

        group.writing = asyncio.ensure_future(write())


@dataclass
class _Entry:
    info: KeyInfo
    until: float
    """Monotonic time it is trusted until: the read's start plus the cache's time."""
    generation: int
    used_at: float
    """When a check last found it (the cache's clock)."""


class _Checks:
    """The key checks of one context's store: those waiting for a read, the reads under
    way, the last uses waiting to be written, and the refresher."""

    MAX = 256
    """At most this many keys per read (more wait for the next)."""
    READS = 8
    """At most this many reads at once (more keys wait for one to end)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.waiting: dict[str, asyncio.Future[KeyInfo | None]] = {}
        self.gathering = False
        """A read is started and takes the waiting keys on the loop's next turn."""
        self.reads: set[asyncio.Future[None]] = set()
        self.due: dict[str, datetime] = {}
        self.writing: asyncio.Future[None] | None = None
        self.refresher: asyncio.Future[None] | None = None


def _seen(answer: asyncio.Future[Any]) -> None:
    """Mark an error as seen (asyncio logs one nobody awaited: every caller gone)."""
    if not answer.cancelled():
        answer.exception()


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
    from the store (in the service pool, one read for every key checked at once)."""
    cache: KeyCache = request.app.state.keys
    return await cache.check(context_of(request), presented)


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
