"""Routing into a sandbox, for the E2B-compatible face (issue 30; its routes are
:mod:`dockyard.api.e2b`).

A request carrying ``E2b-Sandbox-Id`` (+ ``E2b-Sandbox-Port``; the SDKs send
them when ``E2B_SANDBOX_URL`` points here), or addressed to ``<port>-<sandboxId>.<domain>``,
is forwarded, streamed both ways, to that port of the sandbox's container on its own
network — after the caller proved it may: a dockyard key of the sandbox's tenant in
``X-API-Key``, or the sandbox's access token (``X-Access-Token``, which the SDKs send, or
``e2b-traffic-access-token``). dockyard's credentials never reach the sandbox. A paused
sandbox created with E2B's ``autoResume`` and paused through E2B is woken for the call
(audited; :func:`dockyard.sessions.e2b.reach`); any other paused one answers 409.

WebSocket upgrades are routed the same way (same credentials, caps, wake and audit line),
and refused 403 when a browser's ``Origin`` is not the host the request was sent to:
:meth:`Routing._reached`.

Its parts: where a call goes and which headers go with it (:mod:`.e2b_upstream`), who may
make it and how many at once (:mod:`.e2b_admission`), the HTTP forwarding
(:mod:`.e2b_http_proxy`) and the WebSocket bridge (:mod:`.e2b_websocket_proxy`).

The sandboxes' deadlines are enforced by a loop this middleware runs for the server's
lifetime (:func:`dockyard.sessions.e2b_deadlines.expire` every few seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import Conflict, DockyardError
from ..sessions import e2b as sandboxes
from ..sessions import e2b_deadlines, warm
from . import e2b_websocket_proxy
from .context import Context, own_event_loop
from .e2b_admission import Caps, who
from .e2b_errors import e2b_error
from .e2b_http_proxy import HttpProxy
from .e2b_upstream import CHECKED_AS, BadGateway, port_of, same_origin, target, upstream_url
from .e2b_upstream import DOMAIN_VARIABLE as DOMAIN_VARIABLE  # what the routes read
from .middleware import audit_request, request_id

log = logging.getLogger(__package__)

REAP_VARIABLE = "DOCKYARD_E2B_REAP_INTERVAL_S"
REAP_INTERVAL_S = 5.0
INTERVAL_MIN_S = 0.5
"""The shortest interval either loop takes (a 0 would spin the loop)."""
REFILL_VARIABLE = "DOCKYARD_POOL_REFILL_INTERVAL_S"
REFILL_INTERVAL_S = 5.0
"""Seconds between the end of one warm pool refill and the start of the next."""


def interval_s(variable: str, default: float) -> float:
    """Seconds from ``variable`` (at least :data:`INTERVAL_MIN_S`); ``default`` when it is
    unset or not a number (logged)."""
    raw = os.environ.get(variable)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        log.warning("%s=%r is not a number of seconds: %s s is used", variable, raw, default)
        return default
    return max(value, INTERVAL_MIN_S)


class Routing:
    """ASGI middleware (outermost): sandbox-port requests are forwarded, everything else
    goes to the app; the reaper loop runs for the app's lifetime."""

    def __init__(self, app: ASGIApp, context: Context) -> None:
        self.app = app
        self.context = context
        self.caps = Caps()
        self.proxy = HttpProxy(context)
        self._waking: dict[str, tuple[asyncio.Lock, int]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        wanted = target(headers)
        if wanted is None:
            await self.app(scope, receive, send)
            return
        await self._route(scope, receive, send, headers, *wanted)

    # While the server runs: the deadlines (expire() in the pool every few seconds) and the
    # warm pools' refill (in a thread of its own: making members never holds a request's).
    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        tasks: list[asyncio.Task[None]] = []

        async def watched() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup" and not tasks:
                tasks.extend(
                    [asyncio.create_task(self._reap()), asyncio.create_task(self._refill())]
                )
            elif message["type"] == "lifespan.shutdown" and tasks:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                await self.proxy.aclose()
            return message

        await self.app(scope, watched, send)

    async def _reap(self) -> None:
        interval = interval_s(REAP_VARIABLE, REAP_INTERVAL_S)
        while True:
            await asyncio.sleep(interval)
            try:
                gone = await self.context.call(e2b_deadlines.expire, self.context.sessions)
                if gone:
                    log.info("sandboxes past their timeout destroyed: %s", ", ".join(gone))
            except Exception:
                log.exception("the sandbox timeout sweep failed (next round tries again)")

    async def _refill(self) -> None:
        interval = interval_s(REFILL_VARIABLE, REFILL_INTERVAL_S)
        filler = ThreadPoolExecutor(1, "dockyard-pools", initializer=own_event_loop)
        loop = asyncio.get_running_loop()
        stop, backoff = threading.Event(), warm.Backoff()
        refill = functools.partial(warm.refill, self.context.sessions, stop=stop, backoff=backoff)
        try:
            while True:
                try:
                    done = await loop.run_in_executor(filler, refill)
                    if done.made or done.rerolled:
                        log.info(
                            "warm pools: made %s; re-rolled %s",
                            ", ".join(done.made) or "none",
                            ", ".join(done.rerolled) or "none",
                        )
                except DockyardError as error:  # the host settings, say: no traceback
                    log.warning("the warm pool refill failed (next round tries again): %s", error)
                except Exception:
                    log.exception("the warm pool refill failed (next round tries again)")
                await asyncio.sleep(interval)
        finally:
            # A refill making a member finishes that member (a create is never cut in
            # half) and returns; none starts after this.
            stop.set()
            filler.shutdown(wait=False, cancel_futures=True)

    async def _reach(self, scope: Scope, record: Any) -> str:
        """The sandbox's address (:func:`dockyard.sessions.e2b.reach`): one engine read
        when it runs; a wake (E2B's auto-resume) goes one at a time per sandbox, the other
        calls awaiting it on the event loop, never in a worker thread (and the wake itself
        never waits for a snapshot's lock: 409 busy). The wake's audit line names this
        call's request id and caller."""
        state = scope.get("dockyard", {})
        with contextlib.suppress(Conflict):
            return str(await self.context.call(sandboxes.address, record))
        sandbox_id = record.session_id
        lock, waiting = self._waking.get(sandbox_id, (asyncio.Lock(), 0))
        self._waking[sandbox_id] = (lock, waiting + 1)
        try:
            async with lock:
                by = (
                    f"{sandboxes.WOKEN_BY} {state.get('request_id', '-')} by "
                    f"{state.get('actor', 'anonymous')}"
                )
                return str(
                    await self.context.call(sandboxes.reach, self.context.sessions, record, by)
                )
        finally:
            lock, waiting = self._waking[sandbox_id]
            if waiting > 1:
                self._waking[sandbox_id] = (lock, waiting - 1)
            else:
                del self._waking[sandbox_id]

    @contextlib.asynccontextmanager
    async def _reached(
        self,
        scope: Scope,
        headers: dict[str, str],
        sandbox_id: str,
        port_text: str,
        *,
        websocket: bool = False,
    ) -> AsyncIterator[httpx.URL]:
        """The sandbox port's URL, once the call passed every check both kinds of call
        make, in this order: the port; a browser's ``Origin`` (WebSockets); the caller's
        credentials (:func:`.e2b_admission.who`); the request target (before any wake); a
        slot under the caps, held until the block ends; the sandbox's address, woken if it
        may be (:meth:`_reach`)."""
        port = port_of(port_text)
        if websocket and not same_origin(headers.get("origin"), headers.get("host")):
            shown = headers.get("origin", "")[:100]
            raise _Forbidden(
                f"Origin {shown!r} is not {headers.get('host', '')!r}, the host this "
                "WebSocket was sent to (allowed: no Origin, or that host's own)"
            )
        record = await who(self.context, scope, headers, sandbox_id)
        upstream_url(scope, CHECKED_AS, port)  # a bad target is refused before a wake
        with self.caps.slot(sandbox_id, record.tenant, websocket=websocket):
            ip = await self._reach(scope, record)
            yield upstream_url(scope, ip, port)

    async def _route(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[str, str],
        sandbox_id: str,
        port_text: str,
    ) -> None:
        """A request or a WebSocket to a sandbox's port, after :meth:`_reached`'s checks:
        a request is forwarded (:meth:`.e2b_http_proxy.HttpProxy.forward`); a WebSocket is
        accepted with the sandbox's chosen subprotocol and bridged message by message until
        either side closes (the sandbox's close code passed on:
        :func:`.e2b_websocket_proxy.bridge`). Refusals answer HTTP in the SDKs' error shape
        (for a WebSocket, ASGI's denial response). Audited either way."""
        websocket = scope["type"] == "websocket"
        rid = _begin(scope)
        started = time.monotonic()
        status = {"code": 500}
        if websocket and (await receive())["type"] != "websocket.connect":
            return
        answered = False

        async def sent(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] in ("http.response.start", "websocket.accept")
            await send(message)

        try:
            async with self._reached(
                scope, headers, sandbox_id, port_text, websocket=websocket
            ) as url:
                if websocket:
                    await e2b_websocket_proxy.bridge(scope, receive, sent, url, headers, status)
                else:
                    await self.proxy.forward(scope, receive, sent, url, rid, status)
        except DockyardError as error:
            await _refuse(error, scope, receive, send, status)
        except httpx.HTTPError as exc:
            refused = BadGateway(f"sandbox {sandbox_id!r} port {port_text}: {exc!s}"[:300])
            await _refuse(refused, scope, receive, send, status)
        except Exception:
            # Never a traceback to the caller: logged here, answered as a gateway error
            # unless the answer had begun (then it is only cut off).
            log.exception("routed call to sandbox %s port %s failed", sandbox_id, port_text)
            if not answered:
                refused = BadGateway(f"sandbox {sandbox_id!r} port {port_text}: the call failed")
                await _refuse(refused, scope, receive, send, status)
        finally:
            code = status["code"]
            detail = (
                f"e2b-route-ws {port_text} {scope['path']} {code}"
                if websocket
                else f"e2b-route {port_text} {scope['method']} {scope['path']} {code}"
            )
            await audit_request(self.context, scope, ok=code < 400, detail=detail, started=started)


async def _refuse(
    error: DockyardError, scope: Scope, receive: Receive, send: Send, status: dict[str, int]
) -> None:
    """The SDKs' error answer (a WebSocket's as ASGI's denial response when the server has
    it, else a 1008 close); ``status`` becomes its code."""
    response = e2b_error(error, scope)
    status["code"] = response.status_code
    if scope["type"] == "http" or "websocket.http.response" in scope.get("extensions", {}):
        await response(scope, receive, send)  # for a WebSocket: instead of the upgrade
    else:
        await send({"type": "websocket.close", "code": 1008})


def _begin(scope: Scope) -> str:
    """A new request id for the routed call, its actor anonymous until proven."""
    rid = request_id()
    scope.setdefault("dockyard", {}).update(request_id=rid, actor="anonymous")
    return rid


class _Forbidden(DockyardError, status=403, kind="forbidden"):
    """A browser's WebSocket from another origin."""
