"""Delivering the events (:mod:`.events`) to the webhooks that want them: signed,
retried, and only ever to the address that was checked (:class:`Dispatcher`; the store is
:mod:`.webhook_store`, the routes :mod:`.webhooks`).

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
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence

import httpx
from anyio import to_thread
from sqlalchemy import Engine

from ..errors import InvalidInput
from ..sessions import Sessions
from .events import Bell, EventHub, EventStore, as_dict
from .events_ready import engine_probe
from .events_settings import EventSettings, Network
from .store.models import Event, Webhook, WebhookDelivery
from .webhook_store import WebhookStore

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
IN_FLIGHT = 50
"""Deliveries under way at once (each at most ``webhook_timeout_s``)."""
ANSWER_MAX = 512
"""Bytes of a receiver's answer body read and kept in the delivery log (the rest is never
read)."""


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
