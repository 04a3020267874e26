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
:meth:`Routing._route_websocket`.

The sandboxes' deadlines are enforced by a loop this middleware runs for the server's
lifetime (:func:`dockyard.sessions.e2b.expire` every few seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from ..errors import Conflict, DockyardError, InvalidInput, NotFound
from ..sessions import e2b as sandboxes
from .context import Context
from .e2b_errors import e2b_error
from .errors import REQUEST_ID_HEADER, RateLimited, Unauthorized
from .middleware import audit_request
from .principal import authenticated
from .store import KEY_PREFIX

log = logging.getLogger(__package__)

DOMAIN_VARIABLE = "DOCKYARD_E2B_DOMAIN"
"""The domain the SDKs build ``<port>-<id>.<domain>`` host names on (default: the host
name the SDK reached the server by)."""
REAP_VARIABLE = "DOCKYARD_E2B_REAP_INTERVAL_S"
REAP_INTERVAL_S = 5.0
DAEMON_WAIT_S = 10.0
"""How long a call to the daemon's port waits for it to listen (a new sandbox's)."""
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

HOST_FORM = re.compile(r"([0-9]{1,5})-([a-z0-9]{1,63})\.([^:]+)(?::[0-9]+)?", re.ASCII)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
DOCKYARD_CREDENTIALS = frozenset(
    {"x-api-key", "e2b-sandbox-id", "e2b-sandbox-port", "e2b-traffic-access-token"}
)
ACCESS_TOKEN = "x-access-token"  # noqa: S105 - a header name
WEBSOCKET_MESSAGE_BYTES = 4 * 1024 * 1024
"""The largest WebSocket message a sandbox may send through the routing (a larger one
closes the socket, 1009). With :data:`WEBSOCKET_QUEUE` it bounds what one routed socket
holds in the server's memory when its client reads slower than its sandbox writes."""
WEBSOCKET_QUEUE = 2
"""Messages from the sandbox held per socket before reading from it pauses."""
TRAFFIC_TOKEN = "e2b-traffic-access-token"  # noqa: S105 - a header name
CHECKED_AS = "127.0.0.1"
"""The stand-in address a request's target is checked against (:func:`upstream_url`)
before the sandbox's own is known: a refused target never wakes a sandbox."""


def target(headers: dict[str, str]) -> tuple[str, str] | None:
    """(sandbox id, port text) when the request is for a sandbox's port, else None."""
    sandbox = headers.get("e2b-sandbox-id")
    if sandbox is not None:
        return sandbox, headers.get("e2b-sandbox-port", str(sandboxes.ENVD_PORT))
    matched = HOST_FORM.fullmatch(headers.get("host", "").lower())
    if matched is None:
        return None
    wanted = os.environ.get(DOMAIN_VARIABLE)
    if wanted and matched.group(3) != wanted.split(":", 1)[0].lower():
        return None
    return matched.group(2), matched.group(1)


def forwarded_headers(headers: list[tuple[bytes, bytes]], port: int) -> list[tuple[str, str]]:
    """The request's headers without hop-by-hop ones and without dockyard's credentials
    (its API key in any header, its dashboard cookies, the traffic token; the sandbox's
    own access token only reaches its daemon's port)."""
    kept = []
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name in HOP_BY_HOP or name in DOCKYARD_CREDENTIALS:
            continue
        if name == ACCESS_TOKEN and port != sandboxes.ENVD_PORT:
            continue
        if KEY_PREFIX in value and name in ("authorization", "x-api-key"):
            continue
        if name == "cookie":
            pairs = [p.strip() for p in value.split(";") if not dockyards(p.split("=", 1)[0])]
            pairs = [p for p in pairs if p]
            if not pairs:
                continue
            value = "; ".join(pairs)
        kept.append((name, value))
    return kept


def dockyards(cookie_name: str) -> bool:
    """Whether ``cookie_name`` is one of dockyard's (``dockyard_*``, any case, with or
    without a ``__Host-``/``__Secure-`` prefix)."""
    name = cookie_name.strip().lower()
    for prefix in ("__host-", "__secure-"):
        name = name.removeprefix(prefix)
    return name.startswith("dockyard_")


def harmless_cookie(set_cookie: str) -> bool:
    """A sandbox's ``Set-Cookie`` the caller may get: a cookie with a name (a nameless one,
    ``=dockyard_session=…`` or a bare value, comes back from a browser as whatever its value
    says), not named like dockyard's, and with no Domain attribute (it stays on the
    sandbox's own host name, never on the parent domain the dashboard is served from)."""
    pair, *attributes = set_cookie.split(";")
    name = pair.split("=", 1)[0].strip() if "=" in pair else ""
    if not name or dockyards(name):
        return False
    return not any(a.split("=", 1)[0].strip().lower() == "domain" for a in attributes)


def answered_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """The sandbox's answer headers the caller gets: no hop-by-hop ones, no request id of
    its own, and no cookie named like dockyard's (a sandbox on ``<port>-<id>.<domain>``
    must not plant the dashboard's login or session cookie on the parent domain)."""
    kept = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered == REQUEST_ID_HEADER.lower():
            continue
        if lowered == "set-cookie" and not harmless_cookie(value):
            continue
        kept.append((lowered.encode("latin-1"), value.encode("latin-1")))
    return kept


def websocket_headers(headers: list[tuple[bytes, bytes]], port: int) -> list[tuple[str, str]]:
    """:func:`forwarded_headers` for a WebSocket upgrade, without the handshake's own
    headers (the upstream handshake makes its own) and the user agent (passed apart)."""
    return [
        (name, value)
        for name, value in forwarded_headers(headers, port)
        if not name.startswith("sec-websocket-") and name != "user-agent"
    ]


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a WebSocket's ``Origin`` (sent by browsers, whose pages could otherwise
    open a socket to a sandbox with the credentials a user's browser holds) names the host
    the request was sent to. No Origin (a program, the SDKs): True."""
    if origin is None:
        return True
    try:
        parsed = httpx.URL(origin.strip())
        if parsed.scheme not in ("http", "https") or not parsed.host or not host:
            return False
        sent = httpx.URL(f"{parsed.scheme}://{host.strip()}")
    except httpx.InvalidURL:
        return False
    default = 443 if parsed.scheme == "https" else 80
    return bool(sent.host) and (parsed.host, parsed.port or default) == (
        sent.host,
        sent.port or default,
    )


def upstream_url(scope: Scope, ip: str, port: int) -> httpx.URL:
    """The sandbox's URL for this request, built from parts: the request target is only
    ever a path (+ query) on ``ip:port``. Anything else uvicorn's h11 hands through as
    the target (``@host:port/x``, ``http://host/x``, ``host:port``, ``*``) is refused, so no
    caller makes the server connect anywhere but the sandbox it proved it may reach."""
    path = scope.get("raw_path") or scope["path"].encode()
    shown = path.decode("latin-1")[:100]
    refused = _BadTarget(
        "request-target",
        [f"request-target: {shown!r} is not a path (allowed: a path starting with /)"],
    )
    if not path.startswith(b"/"):
        raise refused
    query = scope.get("query_string", b"")
    raw = path + (b"?" + query if query else b"")
    try:
        url = httpx.URL(scheme="http", host=ip, port=port, raw_path=raw)
    except (httpx.InvalidURL, UnicodeDecodeError) as exc:  # not ASCII: no valid target
        raise refused from exc
    if url.host != ip or url.port != port or url.userinfo:
        raise refused
    return url


class Routing:
    """ASGI middleware (outermost): sandbox-port requests are forwarded, everything else
    goes to the app; the reaper loop runs for the app's lifetime."""

    def __init__(self, app: ASGIApp, context: Context) -> None:
        self.app = app
        self.context = context
        self._client: httpx.AsyncClient | None = None
        self._held: dict[tuple[str, str], int] = {}
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
        if scope["type"] == "websocket":
            await self._route_websocket(scope, receive, send, headers, *wanted)
            return
        await self._route(scope, receive, send, headers, *wanted)

    # The deadlines: expire() in the pool every few seconds while the server runs.
    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        task: asyncio.Task[None] | None = None

        async def watched() -> Message:
            nonlocal task
            message = await receive()
            if message["type"] == "lifespan.startup" and task is None:
                task = asyncio.create_task(self._reap())
            elif message["type"] == "lifespan.shutdown" and task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                if self._client is not None:
                    await self._client.aclose()
            return message

        await self.app(scope, watched, send)

    async def _reap(self) -> None:
        interval = float(os.environ.get(REAP_VARIABLE) or REAP_INTERVAL_S)
        while True:
            await asyncio.sleep(interval)
            try:
                gone = await self.context.call(sandboxes.expire, self.context.sessions)
                if gone:
                    log.info("sandboxes past their timeout destroyed: %s", ", ".join(gone))
            except Exception:
                log.exception("the sandbox timeout sweep failed (next round tries again)")

    @contextlib.contextmanager
    def _slot(
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
            held = self._held.get((what, name), 0)
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
            self._held[(what, name)] = self._held.get((what, name), 0) + 1
        try:
            yield
        finally:
            for what, name, _ in keys:
                left = self._held[(what, name)] - 1
                if left:
                    self._held[(what, name)] = left
                else:
                    del self._held[(what, name)]

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

    async def _who(self, scope: Scope, headers: dict[str, str], sandbox_id: str) -> Any:
        """The sandbox's record once the caller proved it may reach it (else an error)."""
        if not sandboxes.SANDBOX_ID.fullmatch(sandbox_id):
            # Never an id this face made: answered like a missing sandbox, before any rate
            # bucket or lookup is keyed by what an unauthenticated caller sent.
            raise NotFound("no such sandbox on this host")
        sessions = self.context.sessions
        # A WebSocket's scope read as a request (the same dict of dockyard's state).
        scope_as_http = scope if scope["type"] == "http" else {**scope, "type": "http"}
        key = headers.get("x-api-key", "").strip()
        if key:
            request = Request(scope_as_http)
            caller = await authenticated(request, key)
            tenant = caller.scope(None)
            scope["dockyard"].update(session=sandbox_id, tenant=tenant)
            return await self.context.call(sandboxes.record_of, sessions, sandbox_id, tenant)
        token = headers.get(ACCESS_TOKEN) or headers.get(TRAFFIC_TOKEN)
        if token:
            # Charged like a key: each attempt to the bucket of (sandbox, client address)
            # before the compare, so guesses from one address never empty the bucket of
            # the sandbox's token; that one only once the token matched.
            limits = self.context.limits
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
            record = await self.context.call(sandboxes.by_token, sessions, sandbox_id, token)
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

    async def _route(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[str, str],
        sandbox_id: str,
        port_text: str,
    ) -> None:
        rid = uuid.uuid4().hex
        scope.setdefault("dockyard", {}).update(request_id=rid, actor="anonymous")
        started = time.monotonic()
        status = {"code": 500}

        async def answer(error: DockyardError) -> None:
            response = e2b_error(error, scope)
            status["code"] = response.status_code
            await response(scope, receive, send)

        try:
            port = _port(port_text)
            record = await self._who(scope, headers, sandbox_id)
            upstream_url(scope, CHECKED_AS, port)  # a bad target is refused before a wake
            with self._slot(sandbox_id, record.tenant):
                ip = await self._reach(scope, record)
                url = upstream_url(scope, ip, port)
                await self._forward(scope, receive, send, url, rid, status)
        except DockyardError as error:
            await answer(error)
        except httpx.HTTPError as exc:
            await answer(_BadGateway(f"sandbox {sandbox_id!r} port {port_text}: {exc!s}"[:300]))
        finally:
            detail = f"e2b-route {port_text} {scope['method']} {scope['path']} {status['code']}"
            await audit_request(
                self.context, scope, ok=status["code"] < 400, detail=detail, started=started
            )

    async def _route_websocket(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[str, str],
        sandbox_id: str,
        port_text: str,
    ) -> None:
        """A WebSocket to a sandbox's port: the same checks as a request (credentials,
        caps, wake, the target a path on the sandbox's own address) plus the browser's
        ``Origin``; then accepted with the sandbox's chosen subprotocol and bridged message
        by message until either side closes (the sandbox's close code passed on). Refusals
        answer HTTP in the SDKs' error shape (ASGI's WebSocket denial response)."""
        rid = uuid.uuid4().hex
        scope.setdefault("dockyard", {}).update(request_id=rid, actor="anonymous")
        started = time.monotonic()
        status = {"code": 500}
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            port = _port(port_text)
            if not same_origin(headers.get("origin"), headers.get("host")):
                shown = headers.get("origin", "")[:100]
                raise _Forbidden(
                    f"Origin {shown!r} is not {headers.get('host', '')!r}, the host this "
                    "WebSocket was sent to (allowed: no Origin, or that host's own)"
                )
            record = await self._who(scope, headers, sandbox_id)
            upstream_url(scope, CHECKED_AS, port)  # a bad target is refused before a wake
            with self._slot(sandbox_id, record.tenant, websocket=True):
                ip = await self._reach(scope, record)
                url = upstream_url(scope, ip, port)
                await self._bridge(scope, receive, send, url, headers, status)
        except DockyardError as error:
            response = e2b_error(error, scope)
            status["code"] = response.status_code
            if "websocket.http.response" in scope.get("extensions", {}):
                await response(scope, receive, send)  # an HTTP answer instead of the upgrade
            else:
                await send({"type": "websocket.close", "code": 1008})
        finally:
            detail = f"e2b-route-ws {port_text} {scope['path']} {status['code']}"
            await audit_request(
                self.context, scope, ok=status["code"] < 400, detail=detail, started=started
            )

    async def _bridge(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        url: httpx.URL,
        headers: dict[str, str],
        status: dict[str, int],
    ) -> None:
        port = int(url.port or 0)
        uri = f"ws://{url.host}:{port}{url.raw_path.decode('ascii')}"
        try:
            upstream = await connect(
                uri,
                additional_headers=websocket_headers(scope.get("headers", []), port),
                user_agent_header=headers.get("user-agent"),
                subprotocols=scope.get("subprotocols") or None,
                compression=None,
                proxy=None,
                open_timeout=DAEMON_WAIT_S,
                max_size=WEBSOCKET_MESSAGE_BYTES,
                max_queue=WEBSOCKET_QUEUE,
            )
        except InvalidStatus as exc:
            code = exc.response.status_code
            raise _BadGateway(f"the sandbox's port {port} refused the WebSocket ({code})") from None
        except (OSError, WebSocketException, TimeoutError) as exc:
            raise _BadGateway(
                f"the sandbox's port {port} did not take the WebSocket: {exc!s}"[:300]
            ) from None
        try:
            await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
            status["code"] = 101
            await _pump(receive, send, upstream)
        finally:
            await upstream.close()

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        url: httpx.URL,
        rid: str,
        status: dict[str, int],
    ) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                trust_env=False,
                timeout=httpx.Timeout(connect=10.0, read=None, write=60.0, pool=10.0),
                # No pool-wide bound for one caller to exhaust: _slot's caps bound it.
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            )
        limit = self.context.limits.upload_bytes
        timeout = self.context.limits.body_timeout_s
        body_read = anyio.Event()

        started: list[bool] = []

        async def request_body() -> AsyncIterator[bytes]:
            started.append(True)
            received = 0
            while True:
                # A body that stops coming is let go (408), as RequestMiddleware does.
                with anyio.move_on_after(timeout) as waited:
                    message = await receive()
                if waited.cancelled_caught:
                    raise _SlowBody(
                        f"request: no body bytes came for {timeout:g} s (allowed: at most "
                        f"{timeout:g} s between two parts of a body; send the body at once)"
                    )
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    raise _TooLarge(f"the body is over {limit} bytes (allowed: at most {limit})")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    body_read.set()
                    return

        port = int(url.port or 0)
        has_body = scope["method"] not in ("GET", "HEAD") or "content-length" in {
            k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])
        }
        outgoing = self._client.build_request(
            scope["method"],
            url,
            headers=forwarded_headers(scope.get("headers", []), port),
            content=request_body() if has_body else None,
        )
        if (outgoing.url.host, outgoing.url.port) != (url.host, url.port):
            raise _BadGateway(f"refused: the request left the sandbox's address ({url.host})")
        if not has_body:
            body_read.set()
        upstream = await self._send(outgoing, port, started)
        try:
            status["code"] = upstream.status_code
            response_headers = answered_headers(upstream.headers.multi_items())
            response_headers.append((REQUEST_ID_HEADER.lower().encode(), rid.encode()))
            await send(
                {
                    "type": "http.response.start",
                    "status": upstream.status_code,
                    "headers": response_headers,
                }
            )
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    # The client went away: stop reading the sandbox (long streams end).
                    await body_read.wait()
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            group.cancel_scope.cancel()
                            return

                group.start_soon(watch)
                try:
                    async for chunk in upstream.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except httpx.HTTPError as exc:
                    # The sandbox broke its answer off (the agent controls it): one line,
                    # no traceback; the caller's answer stays cut (never completed as if
                    # whole) and the audit says 502.
                    status["code"] = 502
                    log.warning(
                        "sandbox %s port %s broke its answer off: %s (request %s)",
                        scope["dockyard"].get("session"),
                        port,
                        type(exc).__name__,
                        rid,
                    )
                else:
                    await send({"type": "http.response.body", "body": b""})
                group.cancel_scope.cancel()
        finally:
            await upstream.aclose()

    async def _send(self, outgoing: httpx.Request, port: int, started: list[bool]) -> Any:
        """Send; while the sandbox's daemon is not listening yet (it starts right after
        the ready marker) a refused connection is tried again for a few seconds, as the
        hosted product's proxy waits for it. Never once the body began to flow."""
        assert self._client is not None
        waited = 0.0
        while True:
            try:
                return await self._client.send(outgoing, stream=True)
            except httpx.ConnectError:
                if port != sandboxes.ENVD_PORT or started or waited >= DAEMON_WAIT_S:
                    raise
            await asyncio.sleep(0.05)
            waited += 0.05


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise InvalidInput(
            "E2b-Sandbox-Port",
            ["E2b-Sandbox-Port: not a port (allowed: a whole number 1-65535)"],
        )
    return int(text)


async def _pump(receive: Receive, send: Send, upstream: ClientConnection) -> None:
    """Messages both ways until one side closes: the client's disconnect closes the
    sandbox's socket; the sandbox's close (its code) closes the client's."""
    async with anyio.create_task_group() as group:

        async def inward() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    group.cancel_scope.cancel()
                    return
                if message["type"] != "websocket.receive":
                    continue
                data = message.get("bytes")
                if data is None:
                    data = message.get("text") or ""
                try:
                    await upstream.send(data)
                except ConnectionClosed:
                    return  # outward sees the close and ends both

        async def outward() -> None:
            try:
                code: int | None = None
                try:
                    async for data in upstream:
                        key = "bytes" if isinstance(data, bytes) else "text"
                        await send({"type": "websocket.send", key: data})
                    code = upstream.close_code
                except ConnectionClosed as closed:  # an error: 1009 (too big), a cut...
                    frame = closed.rcvd or closed.sent
                    code = frame.code if frame is not None else None
                # 1005 (closed without a code) and 1006 (cut) may not be sent in a frame.
                code = 1000 if code == 1005 else 1011 if code in (None, 1006) else code
                await send({"type": "websocket.close", "code": code})
            except OSError:
                pass  # the client went away meanwhile (uvicorn's ClientDisconnected)
            group.cancel_scope.cancel()

        group.start_soon(inward)
        group.start_soon(outward)


class _Forbidden(DockyardError):
    http_status = 403
    kind = "forbidden"


class _BadTarget(DockyardError):
    """A request target that is not a path (HTTP's 400: the request line itself is bad)."""

    http_status = 400
    kind = "invalid-input"


class _BadGateway(DockyardError):
    http_status = 502
    kind = "bad-gateway"


class _SlowBody(DockyardError):
    http_status = 408
    kind = "request-timeout"


class _TooLarge(DockyardError):
    http_status = 413
    kind = "too-large"
