"""Webhooks per tenant: ``POST/GET/DELETE /api/webhooks``, their delivery log, and the
dispatcher that delivers every matching event (:mod:`.events`) signed and retried.

A delivery is a POST of the event's JSON (the SSE ``data``) with the headers:

- ``Dockyard-Event`` (its type), ``Dockyard-Event-Id``, ``Dockyard-Delivery`` (the
  delivery's id: the same on every retry of it), ``Dockyard-Timestamp`` (Unix seconds of
  this attempt);
- ``Dockyard-Signature: sha256=<hex>``: HMAC-SHA256 with the webhook's secret over
  ``<timestamp>.<body>`` (the timestamp header's value, a dot, the raw body bytes). A
  receiver recomputes it, compares in constant time and refuses old timestamps (replays).

A 2xx answer delivers it; anything else (another status, a refused connection, a
timeout) is retried after ``webhook_backoff_s``, doubled each time, up to
``webhook_attempts`` attempts; then the delivery is ``failed``. Redirects are not followed.

The delivery log keeps one row per (webhook, event): its state, the attempts made, when
the next is due, and what the last attempt got (status, error, when, and the first
:data:`ANSWER_MAX` bytes of the answer's body as sent, made printable — only from a
public address, see :func:`answer_kept`). Only that much of an answer is ever read, within
the attempt's deadline; a 2xx status that arrived before the deadline delivers the event
even if the body's bytes do not.

Where a webhook may point (:func:`check_url`): http or https, no user or password in the
URL, and a host whose every address is public (not loopback, private, link-local, shared,
multicast, reserved or unspecified; IPv4 inside IPv6 is judged as IPv4), unless it lies in
a network the admin allows (:data:`~.events_settings.ALLOW_NETWORKS_VARIABLE`). The name is
resolved again at every attempt and the connection goes to the address that was checked
(the host name still sent as ``Host`` and TLS server name), so a name that later resolves
inward (DNS rebinding) reaches nothing inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import httpx
from anyio import to_thread
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import Engine, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ..errors import InvalidInput, NotFound
from ..sessions import Sessions
from .events import EVENT_TYPES, Bell, EventHub, EventStore, as_dict
from .events_ready import engine_probe
from .events_settings import EventSettings, Network
from .principal import Caller, Ctx
from .store.models import Event, Webhook, WebhookDelivery
from .store.transactions import Transactional

log = logging.getLogger(__package__)

SIGNATURE_HEADER = "Dockyard-Signature"
TIMESTAMP_HEADER = "Dockyard-Timestamp"
EVENT_HEADER = "Dockyard-Event"
EVENT_ID_HEADER = "Dockyard-Event-Id"
DELIVERY_HEADER = "Dockyard-Delivery"
URL_MAX = 2000
URL_RULE = (
    "allowed: an http or https URL without user or password whose host resolves only to "
    "public addresses, or into a network the server's admin allows in "
    "DOCKYARD_API_WEBHOOK_ALLOW_NETWORKS"
)
Resolver = Callable[[str, int], list[str]]
ID_MAX = 2**31 - 1
"""The largest id a query or path takes (the store's INTEGER columns; more would fail
in the database, not as 422)."""
IN_FLIGHT = 50
"""Deliveries under way at once (each at most ``webhook_timeout_s``)."""
ANSWER_MAX = 512
"""Bytes of a receiver's answer body read and kept in the delivery log (the rest is never
read)."""
State = Literal["pending", "delivered", "failed"]


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``Dockyard-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (blocking)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _public(address: str, allowed: Sequence[Network]) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip.version == net.version and ip in net for net in allowed):
        return True
    return ip.is_global and not ip.is_multicast


def answer_kept(address: str) -> bool:
    """Whether an answer from ``address`` (the one a delivery connected to) is kept in the
    delivery log: only from a public address. One inside a network the admin allows is
    reached (its status is logged) but its body never read: the allowance is the whole
    server's, so keeping it would let every tenant read the first bytes of any service
    there (an internal API answering a POST), not only learn its status."""
    return _public(address, ())


def check_url(
    url: str, allowed: Sequence[Network], resolver: Resolver = resolve
) -> tuple[httpx.URL, str]:
    """The parsed URL and the checked address to connect to; :class:`InvalidInput` naming
    the rule otherwise (the URL is echoed: it is the tenant's own, and never a secret of
    the server's)."""

    def refused(why: str) -> InvalidInput:
        return InvalidInput("webhook", [f"request.url: {why} ({URL_RULE})"])

    if len(url) > URL_MAX:
        raise refused(f"longer than {URL_MAX} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise refused("not a URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise refused(f"{url!r} is not an http or https URL with a host")
    if parsed.userinfo:
        raise refused("a user or password in the URL")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    # One answer for "does not resolve" and "resolves inward", and no address named: a
    # tenant learns nothing about the host's own network or its names from it.
    inward = refused(f"host {parsed.host!r} does not resolve to public addresses only")
    try:
        addresses = resolver(parsed.host, port)
    except (OSError, UnicodeError):
        raise inward from None
    if not addresses or not all(_public(a, allowed) for a in addresses):
        raise inward
    return parsed, addresses[0]


def excerpt(raw: bytes) -> str | None:
    """The start of an answer's body as the delivery log keeps it: at most
    :data:`ANSWER_MAX` bytes, decoded as UTF-8 (bad bytes replaced), every character
    that is not printable (line breaks, escapes, bidi controls) shown as a space or
    U+FFFD, so it cannot move a terminal's cursor or reorder what a reader sees; None
    when empty."""
    if not raw:
        return None
    text = raw[:ANSWER_MAX].decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() else " " if c in "\t\n\r" else "\ufffd" for c in text)


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class WebhookStore(Transactional):
    """Webhooks and deliveries in the API store."""

    def create(
        self, tenant: str | None, url: str, events: list[str], actor: str, most: int
    ) -> Webhook:
        with self._session() as session:
            count = session.scalar(
                select(func.count()).select_from(Webhook).where(Webhook.tenant == tenant)
            )
            if tenant is not None and (count or 0) >= most:
                raise InvalidInput(
                    "webhook",
                    [f"webhooks: tenant {tenant!r} has {count} (allowed: at most {most})"],
                )
            row = Webhook(
                id=secrets.token_hex(8),
                tenant=tenant,
                url=url,
                events=json.dumps(events),
                secret=f"whsec_{secrets.token_urlsafe(32)}",
                cursor=int(session.scalar(select(func.max(Event.id))) or 0),
                created_by=actor,
                created_at=_now(),
            )
            session.add(row)
            return row

    def find(self, webhook_id: str, tenant: str | None, every_tenant: bool) -> Webhook:
        with self._session() as session:
            row = session.get(Webhook, webhook_id)
            if row is None or (not every_tenant and row.tenant != tenant):
                raise NotFound(f"no webhook {webhook_id!r}")
            return row

    def listed(self, tenant: str | None, every_tenant: bool) -> list[Webhook]:
        query = select(Webhook).order_by(Webhook.created_at, Webhook.id)
        if not every_tenant or tenant is not None:
            query = query.where(Webhook.tenant == tenant)
        with self._session() as session:
            return list(session.scalars(query))

    def delete(self, webhook_id: str, tenant: str | None, every_tenant: bool) -> None:
        self.find(webhook_id, tenant, every_tenant)
        with self._session() as session:
            session.query(WebhookDelivery).filter_by(webhook_id=webhook_id).delete()
            session.query(Webhook).filter_by(id=webhook_id).delete()

    def deliveries(
        self,
        webhook_id: str,
        limit: int,
        *,
        event_id: int | None = None,
        state: str | None = None,
        before: int | None = None,
    ) -> list[tuple[WebhookDelivery, str]]:
        """The webhook's deliveries, newest first: of one event, in one state, and/or with
        a delivery id under ``before`` (the next page)."""
        query = (
            select(WebhookDelivery, Event.type)
            .join(Event, Event.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.webhook_id == webhook_id)
            .order_by(WebhookDelivery.id.desc())
            .limit(limit)
        )
        if event_id is not None:
            query = query.where(WebhookDelivery.event_id == event_id)
        if state is not None:
            query = query.where(WebhookDelivery.state == state)
        if before is not None:
            query = query.where(WebhookDelivery.id < before)
        with self._session() as session:
            return [(row, kind) for row, kind in session.execute(query).all()]

    def delivery(self, webhook_id: str, delivery_id: int) -> tuple[WebhookDelivery, str]:
        """One delivery of the webhook (:class:`NotFound` for one of another webhook's)."""
        query = (
            select(WebhookDelivery, Event.type)
            .join(Event, Event.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.id == delivery_id)
        )
        with self._session() as session:
            found = session.execute(query).first()
        if found is None:
            raise NotFound(f"no delivery {delivery_id} of webhook {webhook_id!r}")
        return found[0], found[1]

    # --- the dispatcher's side ---------------------------------------------------------------

    def fan_out(self) -> int:
        """Queue every new event for each webhook it matches (idempotent: a (webhook,
        event) pair is queued once, whichever replica gets there first)."""
        queued = 0
        with self._session() as session:
            newest = int(session.scalar(select(func.max(Event.id))) or 0)
            hooks = list(session.scalars(select(Webhook).where(Webhook.cursor < newest)))
            now = _now()
            for hook in hooks:
                query = select(Event.id).where(Event.id > hook.cursor, Event.id <= newest)
                if hook.tenant is not None:
                    query = query.where(Event.tenant == hook.tenant)
                wanted = json.loads(hook.events)
                if wanted:
                    query = query.where(Event.type.in_(wanted))
                ids = list(session.scalars(query.order_by(Event.id)))
                if ids:
                    insert = (
                        postgresql.insert
                        if self.engine.dialect.name == "postgresql"
                        else sqlite.insert
                    )
                    values = [
                        {
                            "webhook_id": hook.id,
                            "event_id": event_id,
                            "state": "pending",
                            "attempts": 0,
                            "next_at": now,
                            "created_at": now,
                            "updated_at": now,
                        }
                        for event_id in ids
                    ]
                    session.execute(insert(WebhookDelivery).on_conflict_do_nothing(), values)
                    queued += len(ids)
                hook.cursor = newest
        return queued

    def claim(self, lease_s: float, most: int = 20) -> list[tuple[WebhookDelivery, Webhook, Event]]:
        """Due deliveries, each claimed for ``lease_s`` (its ``next_at`` moved on only if no
        other replica moved it first)."""
        now = _now()
        claimed = []
        with self._session() as session:
            query = (
                select(WebhookDelivery, Webhook, Event)
                .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                .join(Event, Event.id == WebhookDelivery.event_id)
                .where(WebhookDelivery.state == "pending", WebhookDelivery.next_at <= now)
                .order_by(WebhookDelivery.next_at, WebhookDelivery.id)
                .limit(most)
            )
            for delivery, hook, event in session.execute(query).all():
                moved = session.execute(
                    update(WebhookDelivery)
                    .where(
                        WebhookDelivery.id == delivery.id,
                        WebhookDelivery.next_at == delivery.next_at,
                    )
                    .values(next_at=now + timedelta(seconds=lease_s))
                )
                if moved.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append((delivery, hook, event))
        return claimed

    def settle(
        self,
        delivery_id: int,
        attempts: int,
        status: int | None,
        error: str | None,
        settings: EventSettings,
        answer: str | None = None,
    ) -> None:
        ok = status is not None and 200 <= status < 300
        now = _now()
        state = (
            "delivered" if ok else "failed" if attempts >= settings.webhook_attempts else "pending"
        )
        wait = min(settings.webhook_backoff_s * 2 ** (attempts - 1), 3600.0)
        with self._session() as session:
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id)
                .values(
                    state=state,
                    attempts=attempts,
                    last_status=status,
                    last_error=error,
                    last_response=answer,
                    last_attempt_at=now,
                    updated_at=now,
                    next_at=now + timedelta(seconds=wait),
                )
            )


class Dispatcher:
    """Queues and delivers; :meth:`run` is the background task the app's lifespan starts."""

    def __init__(
        self,
        store: WebhookStore,
        settings: EventSettings,
        bell: Bell,
        resolver: Resolver = resolve,
    ) -> None:
        self.store, self.settings, self.bell, self.resolver = store, settings, bell, resolver
        self.closing = False
        self._client: httpx.AsyncClient | None = None
        self._flying: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=self.settings.webhook_timeout_s,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=IN_FLIGHT),
        )
        try:
            while not self.closing:
                try:
                    await self.once()
                except Exception:
                    log.exception("webhook delivery round failed")
                    await asyncio.sleep(1.0)
                await self.bell.wait(min(0.5, self.settings.webhook_backoff_s))
        finally:
            for task in list(self._flying):
                task.cancel()
            await asyncio.gather(*self._flying, return_exceptions=True)
            await self._client.aclose()

    async def once(self) -> int:
        """Queue new events, then start the due deliveries without waiting for them (a
        slow receiver holds only its own delivery, never the others')."""
        await to_thread.run_sync(self.store.fan_out)
        room = IN_FLIGHT - len(self._flying)
        if room <= 0:
            return 0
        lease = self.settings.webhook_timeout_s * 2 + 5
        due = await to_thread.run_sync(self.store.claim, lease, room)
        for item in due:
            task = asyncio.get_running_loop().create_task(self.deliver(*item))
            self._flying.add(task)
            task.add_done_callback(self._flying.discard)
        return len(due)

    async def deliver(self, delivery: WebhookDelivery, hook: Webhook, event: Event) -> None:
        body = json.dumps(as_dict(event), ensure_ascii=True, separators=(",", ":")).encode()
        status: int | None = None
        error: str | None = None
        kept = bytearray()
        try:
            url, address = await to_thread.run_sync(
                check_url, hook.url, self.settings.webhook_allow_networks, self.resolver
            )
            target = url.copy_with(host=address)
            stamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "dockyard-webhooks/1",
                # The kept excerpt is of the bytes as sent: no decompression (no bomb).
                "Accept-Encoding": "identity",
                "Host": url.netloc.decode("ascii"),
                EVENT_HEADER: event.type,
                EVENT_ID_HEADER: str(event.id),
                DELIVERY_HEADER: str(delivery.id),
                TIMESTAMP_HEADER: stamp,
                SIGNATURE_HEADER: signature(hook.secret, stamp, body),
            }
            assert self._client is not None
            # Only the first ANSWER_MAX bytes of the answer are read (a receiver cannot
            # make the server hold more), and the whole attempt has one deadline (a
            # receiver dripping bytes included).
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                async with self._client.stream(
                    "POST",
                    target,
                    content=body,
                    headers=headers,
                    extensions={"sni_hostname": url.host} if url.scheme == "https" else {},
                ) as answer:
                    status = answer.status_code
                    if answer_kept(address):
                        async for chunk in answer.aiter_raw():
                            kept += chunk[: ANSWER_MAX - len(kept)]
                            if len(kept) >= ANSWER_MAX:
                                break
        except InvalidInput as refused:
            error = refused.problems[0]
        except TimeoutError:
            if status is None:  # the status came in time: the body's tail does not count
                error = f"no answer within {self.settings.webhook_timeout_s:g} s"
        except httpx.HTTPError as exc:
            if status is None:
                error = f"{type(exc).__name__}: {exc}"[:300]
        if status is not None and not 200 <= status < 300:
            error = f"answered {status}"
        await to_thread.run_sync(
            self.store.settle,
            delivery.id,
            delivery.attempts + 1,
            status,
            error,
            self.settings,
            excerpt(bytes(kept)),
        )

    def close(self) -> None:
        self.closing = True
        self.bell.ring()


def start(
    engine: Engine, sessions: Sessions, settings: EventSettings | None = None
) -> tuple[EventHub, Dispatcher]:
    """The event source and the dispatcher over the API store's ``engine`` (started by
    :func:`running`); settings from the environment unless given."""
    settings = settings or EventSettings.from_env(sessions.where.audit_log)
    probe = settings.ready_probe or engine_probe(sessions)
    hub = EventHub(EventStore(engine), settings, probe)
    return hub, Dispatcher(WebhookStore(engine), settings, hub.bell)


@contextlib.asynccontextmanager
async def running(hub: EventHub, dispatcher: Dispatcher) -> AsyncIterator[None]:
    """Both background tasks for the app's lifetime (the lifespan), stopped after it."""
    tasks = [asyncio.create_task(hub.run()), asyncio.create_task(dispatcher.run())]
    try:
        yield
    finally:
        hub.close()
        dispatcher.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- the HTTP face ------------------------------------------------------------------------

router = APIRouter(tags=["webhooks"])


class NewWebhook(BaseModel):
    url: str = Field(max_length=URL_MAX, description="Where events are POSTed.")
    events: list[str] = Field(
        default_factory=list, max_length=len(EVENT_TYPES), description="Event types; [] = all."
    )
    tenant: str | None = Field(
        default=None,
        max_length=64,
        description="Admin keys: whose events (none: every tenant's). A tenant's key: its own.",
    )


class WebhookOut(BaseModel):
    id: str
    tenant: str | None
    url: str
    events: list[str]
    createdAt: datetime

    @classmethod
    def of(cls, row: Webhook) -> WebhookOut:
        return cls(
            id=row.id,
            tenant=row.tenant,
            url=row.url,
            events=json.loads(row.events),
            createdAt=_aware(row.created_at),
        )


class CreatedWebhook(WebhookOut):
    secret: str = Field(description="The signing secret: shown this once.")


class Delivery(BaseModel):
    """One event for one webhook: what happened to it at the endpoint."""

    id: int = Field(description="The Dockyard-Delivery header's value (the same on retries).")
    eventId: int = Field(description="The Dockyard-Event-Id header's value.")
    eventType: str
    state: str = Field(
        description="pending (more attempts to come), delivered (a 2xx answer) or failed "
        "(attemptsAllowed attempts made, none answered 2xx)"
    )
    attempts: int = Field(description="Attempts made so far.")
    attemptsAllowed: int = Field(description="The server's bound on attempts per delivery.")
    lastStatus: int | None = Field(description="The last attempt's HTTP status (none: no answer).")
    lastError: str | None = Field(description="Why the last attempt did not deliver.")
    lastResponse: str | None = Field(
        description=f"The start of the last answer's body (at most {ANSWER_MAX} bytes, "
        "non-printable characters replaced). None when empty, and always when the "
        "receiver's address is not public (inside a network only the admin's allowance "
        "admits): such an answer's body is never read."
    )
    lastAttemptAt: datetime | None
    nextAttemptAt: datetime | None = Field(description="When the next attempt is due (pending).")
    createdAt: datetime
    updatedAt: datetime


def _stores(request: Request) -> WebhookStore:
    return request.app.state.webhooks  # type: ignore[no-any-return]


@router.post("/api/webhooks", status_code=201, summary="Create a webhook")
async def create_webhook(
    new: NewWebhook, request: Request, caller: Caller, ctx: Ctx
) -> CreatedWebhook:
    settings: EventSettings = request.app.state.events.settings
    unknown = [e for e in new.events if e not in EVENT_TYPES]
    if unknown:
        raise InvalidInput(
            "webhook",
            [
                f"request.events: {e!r} is not an event type (allowed: {', '.join(EVENT_TYPES)})"
                for e in unknown
            ],
        )
    await to_thread.run_sync(check_url, new.url, settings.webhook_allow_networks)
    row = await ctx.call(
        _stores(request).create,
        caller.scope(new.tenant),
        new.url,
        sorted(set(new.events)),
        caller.key_id,
        settings.webhooks_per_tenant,
    )
    return CreatedWebhook(**WebhookOut.of(row).model_dump(), secret=row.secret)


@router.get("/api/webhooks", summary="List webhooks (never their secrets)")
async def list_webhooks(
    request: Request,
    caller: Caller,
    ctx: Ctx,
    tenant: Annotated[
        str | None, Query(max_length=64, description="Admin keys: one tenant's.")
    ] = None,
) -> list[WebhookOut]:
    rows = await ctx.call(_stores(request).listed, caller.scope(tenant), caller.admin)
    return [WebhookOut.of(row) for row in rows]


@router.get("/api/webhooks/{webhook_id}", summary="One webhook")
async def get_webhook(webhook_id: str, request: Request, caller: Caller, ctx: Ctx) -> WebhookOut:
    row = await ctx.call(_stores(request).find, webhook_id, caller.scope(), caller.admin)
    return WebhookOut.of(row)


@router.delete("/api/webhooks/{webhook_id}", status_code=204, summary="Delete a webhook")
async def delete_webhook(webhook_id: str, request: Request, caller: Caller, ctx: Ctx) -> Response:
    await ctx.call(_stores(request).delete, webhook_id, caller.scope(), caller.admin)
    return Response(status_code=204)


@router.get("/api/webhooks/{webhook_id}/deliveries", summary="A webhook's delivery log")
async def list_deliveries(
    webhook_id: str,
    request: Request,
    caller: Caller,
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    event: Annotated[
        int | None, Query(ge=1, le=ID_MAX, description="Only the delivery of this event id.")
    ] = None,
    state: Annotated[State | None, Query(description="Only the deliveries in this state.")] = None,
    before: Annotated[
        int | None,
        Query(ge=1, le=ID_MAX, description="Only deliveries with a smaller id (next page)."),
    ] = None,
) -> list[Delivery]:
    """Newest first: each event sent to the webhook, its state, attempts and last answer
    (one row per event)."""
    store = _stores(request)
    await ctx.call(store.find, webhook_id, caller.scope(), caller.admin)
    found = await ctx.call(
        store.deliveries, webhook_id, limit, event_id=event, state=state, before=before
    )
    allowed = _allowed(request)
    return [_delivery(row, kind, allowed) for row, kind in found]


@router.get(
    "/api/webhooks/{webhook_id}/deliveries/{delivery_id}", summary="One delivery of a webhook"
)
async def get_delivery(
    webhook_id: str,
    delivery_id: Annotated[int, Path(ge=1, le=ID_MAX)],
    request: Request,
    caller: Caller,
    ctx: Ctx,
) -> Delivery:
    """What happened to one event at the webhook's endpoint (the ``Dockyard-Delivery``
    header's id)."""
    store = _stores(request)
    await ctx.call(store.find, webhook_id, caller.scope(), caller.admin)
    row, kind = await ctx.call(store.delivery, webhook_id, delivery_id)
    return _delivery(row, kind, _allowed(request))


def _allowed(request: Request) -> int:
    return int(request.app.state.events.settings.webhook_attempts)


def _delivery(row: WebhookDelivery, kind: str, allowed: int) -> Delivery:
    pending = row.state == "pending"
    return Delivery(
        id=row.id,
        eventId=row.event_id,
        eventType=kind,
        state=row.state,
        attempts=row.attempts,
        attemptsAllowed=allowed,
        lastStatus=row.last_status,
        lastError=row.last_error,
        lastResponse=row.last_response,
        lastAttemptAt=_aware(row.last_attempt_at) if row.last_attempt_at else None,
        nextAttemptAt=_aware(row.next_at) if pending else None,
        createdAt=_aware(row.created_at),
        updatedAt=_aware(row.updated_at),
    )


__all__: list[Any] = [
    "ANSWER_MAX",
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "EVENT_ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Dispatcher",
    "WebhookStore",
    "answer_kept",
    "check_url",
    "router",
    "signature",
]
